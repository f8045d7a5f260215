import DiffusionKernels
import DiffusionModels
import Foundation

struct BenchOptions {
    var threads = ProcessInfo.processInfo.activeProcessorCount
    var batches = [1, 8]
    var iterations = 5
    var config = "tools/bench/ddpm-cifar10-32-config.json"
    var python: String? = ProcessInfo.processInfo.environment["DIFFUSION_BENCH_PYTHON"]
    var measureBatch: Int?
    var queueJobs = 10_000
    var daemonOnly = false
    var soakKills: Int?
    var measureStableDiffusion: String?
    var stableDiffusionOnly = false

    static let usage = """
        usage: diffusion-bench [--threads N] [--batches 1,8] [--iterations N] [--config PATH] [--python PATH]
                               [--queue-jobs N] [--daemon-only] [--soak KILLS]
          --python  a Python with torch and diffusers (default $DIFFUSION_BENCH_PYTHON); without it only this runtime is timed
          --queue-jobs  jobs the queue-load measurement submits (default 10000)
          --daemon-only  only the daemon's measurements (queue load, batching)
          --soak KILLS  only the crash soak: kill -9 the daemon KILLS times while it renders 20 jobs
          --sd-only  only the Stable Diffusion 1.5 section (U-Net, decoder, whole render against PyTorch)
        """

    static func parse(_ arguments: ArraySlice<String>) -> BenchOptions {
        var options = BenchOptions()
        var rest = arguments
        func value(_ flag: String) -> String {
            guard let next = rest.popFirst() else { fail("\(flag) needs a value") }
            return next
        }
        func number(_ flag: String) -> Int {
            guard let n = Int(value(flag)), n > 0 else { fail("\(flag) takes a positive whole number") }
            return n
        }
        while let flag = rest.popFirst() {
            switch flag {
            case "--threads": options.threads = number(flag)
            case "--iterations": options.iterations = number(flag)
            case "--config": options.config = value(flag)
            case "--python": options.python = value(flag)
            case "--measure-batch": options.measureBatch = number(flag)
            case "--queue-jobs": options.queueJobs = number(flag)
            case "--daemon-only": options.daemonOnly = true
            case "--soak": options.soakKills = number(flag)
            case "--measure-sd": options.measureStableDiffusion = value(flag)
            case "--sd-only": options.stableDiffusionOnly = true
            case "--batches":
                let list = value(flag).split(separator: ",").compactMap { Int($0) }
                guard !list.isEmpty, list.allSatisfy({ $0 > 0 }) else { fail("--batches takes a list such as 1,8") }
                options.batches = list
            case "-h", "--help":
                print(usage)
                exit(0)
            default: fail("unknown option \(flag)")
            }
        }
        return options
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("diffusion-bench: \(message)\n\(BenchOptions.usage)\n".utf8))
    exit(2)
}

/// One measured configuration, as both runtimes report it.
struct Measurement: Codable {
    var runtime: String
    var batch: Int
    var threads: Int
    var ms_per_forward_min: Double
    var ms_per_forward_median: Double
    var ms_per_image: Double
    var gflops: Double
    var flops_per_image: Double
    var peak_rss_mb: Double

    var json: String { String(data: try! JSONEncoder().encode(self), encoding: .utf8)! }
}

func measureKernelRuntime(batch: Int, options: BenchOptions) throws -> Measurement {
    guard let data = FileManager.default.contents(atPath: options.config) else { fail("cannot read \(options.config)") }
    let config = try UNet2DConfig(json: data, source: options.config)
    let model = try UNet2DModel(config: config, weights: RandomWeights(seed: 0))
    let runtime = KernelRuntime(threadCount: options.threads)
    let size = config.sampleSize ?? [32, 32]
    let sample = Tensor(uninitialized: [batch, config.inChannels, size[0], size[1]])
    var generator = Philox(seed: 1)
    generator.fillNormal(sample.data, count: sample.count)
    let timesteps = [Float](repeating: 500, count: batch)

    _ = try model.forward(sample, timesteps: timesteps, on: runtime)
    let flops = Double(runtime.floatingPointOperations)
    var times: [Double] = []
    for _ in 0..<options.iterations {
        let start = DispatchTime.now().uptimeNanoseconds
        _ = try model.forward(sample, timesteps: timesteps, on: runtime)
        times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
    }
    let best = times.min()!
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Measurement(
        runtime: "diffusiond", batch: batch, threads: options.threads, ms_per_forward_min: best,
        ms_per_forward_median: times.sorted()[times.count / 2], ms_per_image: best / Double(batch),
        gflops: flops / best / 1e6, flops_per_image: flops / Double(batch), peak_rss_mb: Double(usage.ru_maxrss) / 1024)
}

/// Runs `executable arguments` in a child process (its peak RSS its own) and
/// decodes the last line it prints; nil when it fails.
func measureInChild<Result: Decodable>(_ executable: String, _ arguments: [String], as: Result.Type = Measurement.self) -> Result? {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    do { try process.run() } catch { return nil }
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0,
          let line = String(data: output, encoding: .utf8)?.split(separator: "\n").last
    else { return nil }
    return try? JSONDecoder().decode(Result.self, from: Data(line.utf8))
}

func runComparison(_ options: BenchOptions) {
    let me = Bundle.main.executablePath ?? CommandLine.arguments[0]
    let torchScript = "tools/bench/torch_unet.py"
    print("U-Net forward, google/ddpm-cifar10-32 architecture, random weights, \(options.threads) threads, best of \(options.iterations)")
    if options.python == nil { print("(no --python or DIFFUSION_BENCH_PYTHON: PyTorch is not timed)") }
    let header = ["runtime", "batch", "ms/forward", "median", "ms/image", "GFLOP/s", "GFLOP/img", "peak RSS MB", "ours/torch"]
    var rows: [[String]] = []
    for batch in options.batches {
        let common = ["--batch", "\(batch)", "--threads", "\(options.threads)", "--iterations", "\(options.iterations)"]
        guard let ours = measureInChild(me, ["--measure-batch", "\(batch)", "--threads", "\(options.threads)",
                                             "--iterations", "\(options.iterations)", "--config", options.config])
        else { fail("the measurement of batch \(batch) failed") }
        var torch: Measurement?
        if let python = options.python {
            torch = measureInChild(python, [torchScript, "--config", options.config] + common)
            if torch == nil { print("(PyTorch run of batch \(batch) failed: is torch with diffusers installed in \(python)?)") }
        }
        for m in [ours] + (torch.map { [$0] } ?? []) {
            let ratio = m.runtime == "diffusiond" ? torch.map { String(format: "%.2f", ours.ms_per_image / $0.ms_per_image) } ?? "-" : ""
            rows.append([m.runtime, "\(m.batch)", String(format: "%.1f", m.ms_per_forward_min),
                         String(format: "%.1f", m.ms_per_forward_median), String(format: "%.1f", m.ms_per_image),
                         String(format: "%.1f", m.gflops), String(format: "%.2f", m.flops_per_image / 1e9),
                         String(format: "%.0f", m.peak_rss_mb), ratio])
        }
        if let torch { rows.append(["rss ours/torch", "\(batch)", "", "", "", "", "", String(format: "%.2f", ours.peak_rss_mb / torch.peak_rss_mb), ""]) }
    }
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max()! }
    for row in [header] + rows {
        print(row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
            .joined(separator: "  "))
    }
}
