// diffctl: the daemon's client. Each verb is one request over the socket
// (docs/protocol.md); replies are printed for people, or as JSON with --json.
// Exit status: 0 done, 1 refused, 2 no daemon; watch: 0 succeeded, 3 failed, 4 canceled.
import ArgumentParser
import DiffusionDaemon
import Foundation

@main
struct Diffctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Queue and follow renders of a running diffusiond.",
        discussion: "Global options go before the verb: diffctl [--socket PATH] VERB ... ($DIFFUSIOND_SOCKET also names the socket).",
        version: DaemonClient.programVersion,
        subcommands: [Submit.self, List.self, Show.self, Watch.self, Wait.self, Cancel.self, Hold.self, Release.self, Retry.self,
                      Priority.self, Plugins.self, Models.self, Stats.self, MetricsCommand.self, Pause.self, Resume.self, Drain.self, Ping.self])

    @OptionGroup var global: Global
}

struct Global: ParsableArguments {
    @Option(help: "The daemon's socket (default: $DIFFUSIOND_SOCKET, else /run/diffusiond.sock).") var socket: String?
    @Flag(help: "Print replies as JSON, for scripts.") var json = false
}

/// One request and its reply; a refusal is one line and exit 1, no daemon exit 2.
func call(_ global: Global, _ request: [String: Any]) throws -> [String: Any] {
    let reply: [String: Any]
    do {
        reply = try connect(global).call(request)
    } catch let error as DaemonClient.NoDaemon {
        fail("diffctl: \(error.message)", code: 2)
    }
    if reply["ok"] as? Bool != true {
        if global.json { printJSON(reply) } else { FileHandle.standardError.write(Data("diffctl: \(reply["error"] as? String ?? "refused")\n".utf8)) }
        throw ExitCode(1)
    }
    return reply
}

func connect(_ global: Global) throws -> DaemonClient {
    do {
        return try DaemonClient(socketPath: DaemonClient.socketPath(global.socket))
    } catch let error as DaemonClient.NoDaemon {
        fail("diffctl: \(error.message)", code: 2)
    }
}

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data("\(message)\n".utf8))
    Foundation.exit(code)
}

func printJSON(_ value: Any) {
    let data = (try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])) ?? Data()
    print(String(decoding: data, as: UTF8.self))
}

/// One line for a job: id, state, owner, progress, model.
func summary(_ job: [String: Any]) -> String {
    let progress = job["progress"] as? [String: Any] ?? [:]
    let owner = (job["owner"] as? [String: Any])?["user"] as? String ?? "?"
    let step = "\(progress["step"] ?? 0)/\(progress["total"] ?? 0)"
    let error = (job["error"] as? String).map { "  \($0)" } ?? ""
    return columns(["\(job["id"] ?? "?")", "\(job["state"] ?? "?")", owner, "\(job["priority"] ?? 0)", step,
                    "\(job["model"] ?? "")", "\(job["created_at"] ?? "")"]) + error
}

/// The list's columns, left-aligned to fixed widths.
func columns(_ fields: [String]) -> String {
    zip(fields, [6, 9, 10, 5, 9, 14, 0]).map { field, width in
        field.count >= width ? field : field + String(repeating: " ", count: width - field.count)
    }.joined(separator: " ")
}

func show(_ global: Global, job: [String: Any], verb: String) {
    if global.json { printJSON(job) } else { print("job \(job["id"] ?? "?") \(verb): \(job["state"] ?? "?")") }
}

struct JobID: ParsableArguments {
    @Argument(help: "The job's id.") var id: String
}

struct Submit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Queue a job: a job file (docs/jobs.md), flags for the common fields, or both (flags win).")

    @OptionGroup var global: Global
    @Argument(help: "A job file; init_noise, init_image and image paths in it are read here and sent inline.") var file: String?
    @Option(help: "The model's name (see `diffctl models`).") var model: String?
    @Option(help: "The sampler plugin (ddim, ddpm, ...).") var sampler: String?
    @Option(help: "Sampling steps.") var steps: Int?
    @Option(help: "Images.") var count: Int?
    @Option(help: "The seed.") var seed: Int?
    @Option(name: .customLong("class"), help: "A class label, one for all images or one per image (repeatable).") var classes: [Int] = []
    @Option(help: "The prompt, for a text-conditioned model.") var prompt: String?
    @Option(help: "The prompt CFG's unconditional pass reads (default: the empty prompt).") var negativePrompt: String?
    @Option(help: "Image-to-image: the PNG to start from (sent inline).") var image: String?
    @Option(help: "Image-to-image: how much of the schedule re-draws the image, 0 < s <= 1 (default 0.8).") var strength: Double?
    @Option(help: "Super-resolution: the PNG a super-resolution model upscales (sent inline).") var upscale: String?
    @Option(help: "Super-resolution: the augmentation level of its image (default: the model's noise_level).") var noiseLevel: Int?
    @Option(help: "A cascade's next stage: a super-resolution model conditioned on the stage before (repeatable).")
    var stage: [String] = []
    @Option(help: "Image width in pixels (default: the model's).") var width: Int?
    @Option(help: "Image height in pixels (default: the model's).") var height: Int?
    @Option(help: "Guidance: cfg or classifier.") var guidance: String?
    @Option(help: "Guidance scale.") var scale: Double?
    @Option(help: "Queue priority, -1000...1000 (higher first).") var priority: Int?
    @Flag(help: "Follow the job until it ends, as `diffctl watch` does.") var watch = false
    @Flag(help: "Check the job as the daemon would queue it and print it resolved; queue nothing.")
    var dryRun = false
    @Flag(help: "Queue the job held: it starts only after `diffctl release`.") var hold = false
    @Flag(name: .shortAndLong, help: "Print only the job's id.") var quiet = false

    func run() throws {
        var job: [String: Any] = [:]
        if let file {
            guard let data = FileManager.default.contents(atPath: file),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else { fail("diffctl: \(file): not a readable JSON object", code: 1) }
            job = object
            // the files a job names are read here and sent inline: the daemon opens none
            for (key, inline) in [("init_noise", "npy_base64"), ("init_image", "png_base64"), ("image", "png_base64")] {
                guard let path = job[key] as? String else { continue }
                let base = URL(fileURLWithPath: file).deletingLastPathComponent()
                let url = path.hasPrefix("/") ? URL(fileURLWithPath: path) : base.appendingPathComponent(path)
                guard let bytes = FileManager.default.contents(atPath: url.path) else {
                    fail("diffctl: \(key): cannot read \(url.path)", code: 1)
                }
                job[key] = [inline: bytes.base64EncodedString()]
            }
        }
        if let model { job["model"] = model }
        if let sampler { job["sampler"] = sampler }
        if let steps { job["steps"] = steps }
        if let count { job["count"] = count }
        if let seed { job["seed"] = seed }
        if classes.count == 1 { job["class"] = classes[0] } else if !classes.isEmpty { job["class"] = classes }
        if let prompt { job["prompt"] = prompt }
        if let negativePrompt { job["negative_prompt"] = negativePrompt }
        if let image {
            guard let bytes = FileManager.default.contents(atPath: image) else { fail("diffctl: --image: cannot read \(image)", code: 1) }
            job["init_image"] = ["png_base64": bytes.base64EncodedString()]
        }
        if let strength { job["strength"] = strength }
        if let upscale {
            guard let bytes = FileManager.default.contents(atPath: upscale) else { fail("diffctl: --upscale: cannot read \(upscale)", code: 1) }
            job["image"] = ["png_base64": bytes.base64EncodedString()]
        }
        if let noiseLevel { job["noise_level"] = noiseLevel }
        if !stage.isEmpty { job["stages"] = (job["stages"] as? [Any] ?? []) + stage.map { ["model": $0] } }
        if let width { job["width"] = width }
        if let height { job["height"] = height }
        if let guidance { job["guidance"] = ["kind": guidance] }
        if let scale {
            var object = job["guidance"] as? [String: Any] ?? ["kind": "cfg"]
            object["scale"] = scale
            job["guidance"] = object
        }
        if let priority { job["priority"] = priority }
        guard job["model"] != nil else { fail("diffctl: give a job file or --model", code: 1) }
        if dryRun {
            printJSON(try call(global, ["verb": "submit", "job": job, "dry_run": true])["plan"] ?? [:])
            return
        }
        let reply = try call(global, ["verb": "submit", "job": job, "hold": hold])
        let record = reply["job"] as? [String: Any] ?? [:]
        if quiet {
            print(record["id"] ?? "?")
            fflush(nil)
            if watch { try Watch.follow(global, id: "\(record["id"] ?? "")", quiet: true) }
        } else if watch {
            if !global.json {
                print("job \(record["id"] ?? "?") queued")
                fflush(nil)
            }
            try Watch.follow(global, id: "\(record["id"] ?? "")")
        } else if global.json {
            printJSON(record)
        } else {
            print("job \(record["id"] ?? "?") \(hold ? "held" : "queued"); outputs will be in \(record["output_dir"] ?? "?")")
        }
    }
}

struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics", abstract: "Print the daemon's metrics (OpenMetrics text).")

    @OptionGroup var global: Global

    func run() throws { print(try call(global, ["verb": "metrics"])["text"] as? String ?? "", terminator: "") }
}

struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until every job given has ended. Exits 0 when all succeeded, 1 when any did not.")

    @OptionGroup var global: Global
    @Argument(help: "Job ids.") var ids: [String]

    func run() throws {
        var failed: [String] = []
        for id in ids {
            do {
                try Watch.follow(global, id: id, quiet: true)
            } catch let exit as ExitCode where exit.rawValue == 3 || exit.rawValue == 4 {
                failed.append(id)
            }
        }
        if !failed.isEmpty {
            if !global.json { FileHandle.standardError.write(Data("diffctl: job(s) \(failed.joined(separator: ", ")) did not succeed\n".utf8)) }
            throw ExitCode(1)
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List jobs, newest first (100 unless --all).")

    @OptionGroup var global: Global
    @Option(help: "Only jobs in this state (repeatable).") var state: [String] = []
    @Option(help: "Only this user's jobs (name or uid).") var owner: String?
    @Flag(help: "Every job, not only the newest 100.") var all = false

    func run() throws {
        var request: [String: Any] = ["verb": "list", "all": all]
        if !state.isEmpty { request["state"] = state }
        if let owner { request["owner"] = owner }
        let jobs = try call(global, request)["jobs"] as? [[String: Any]] ?? []
        if global.json { return printJSON(jobs) }
        print(columns(["ID", "STATE", "OWNER", "PRI", "STEP", "MODEL", "CREATED"]))
        for job in jobs { print(summary(job)) }
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one job, its outputs and its event log.")

    @OptionGroup var global: Global
    @OptionGroup var job: JobID

    func run() throws {
        let reply = try call(global, ["verb": "show", "id": job.id])
        if global.json {
            var object = reply["job"] as? [String: Any] ?? [:]
            object["events"] = reply["events"]
            return printJSON(object)
        }
        let record = reply["job"] as? [String: Any] ?? [:]
        print(summary(record))
        if let host = record["host"] as? String { print("host \(host)") }
        if let preview = (record["progress"] as? [String: Any])?["preview"] as? String { print("preview \(preview)") }
        print("output_dir \(record["output_dir"] ?? "")")
        for output in record["outputs"] as? [String] ?? [] { print("  \(output)") }
        for event in reply["events"] as? [[String: Any]] ?? [] {
            print("\(event["time"] ?? "")  \(event["state"] ?? "")  \(event["reason"] ?? "")")
        }
    }
}

struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a job to its end: step, ETA and images done. Exits 0 succeeded, 3 failed, 4 canceled.")

    @OptionGroup var global: Global
    @OptionGroup var job: JobID

    func run() throws { try Self.follow(global, id: job.id) }

    /// Follows job `id` to its end, exiting as `watch` documents. On a terminal
    /// one line is redrawn; elsewhere (a log, a pipe) a line is written at each
    /// state change and each tenth of the steps.
    static func follow(_ global: Global, id: String, quiet: Bool = false) throws {
        let client = try connect(global)
        do {
            try client.send(["verb": "watch", "id": id])
            let tty = isatty(STDERR_FILENO) == 1
            var lastLine = ""
            var lastMark = ""
            while true {
                let event = try client.receive()
                guard event["ok"] as? Bool == true else {
                    FileHandle.standardError.write(Data("diffctl: \(event["error"] as? String ?? "refused")\n".utf8))
                    throw ExitCode(1)
                }
                let job = event["job"] as? [String: Any] ?? [:]
                if global.json {
                    let data = (try? JSONSerialization.data(withJSONObject: event, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
                    print(String(decoding: data, as: UTF8.self))
                    fflush(nil)
                } else if !quiet {
                    let line = progressLine(job)
                    let progress = job["progress"] as? [String: Any] ?? [:]
                    let tenth = (progress["step"] as? Int ?? 0) * 10 / max(progress["total"] as? Int ?? 1, 1)
                    let mark = "\(job["state"] ?? "") \(progress["stage"] ?? 1) \(tenth)"
                    if tty {
                        FileHandle.standardError.write(Data("\r\u{1B}[K\(line)".utf8))
                    } else if mark != lastMark && line != lastLine {
                        FileHandle.standardError.write(Data("\(line)\n".utf8))
                        lastMark = mark
                    }
                    lastLine = line
                }
                guard event["event"] as? String == "end" else { continue }
                if tty && !global.json && !quiet { FileHandle.standardError.write(Data("\n".utf8)) }
                if quiet {
                    switch job["state"] as? String {
                    case "succeeded": return
                    case "canceled": throw ExitCode(4)
                    default: throw ExitCode(3)
                    }
                }
                switch job["state"] as? String {
                case "succeeded":
                    if !global.json { print("job \(id) succeeded: \(job["output_dir"] ?? "")") }
                    return
                case "canceled":
                    if !global.json { print("job \(id) canceled") }
                    throw ExitCode(4)
                default:
                    if !global.json { print("job \(id) failed: \(job["error"] as? String ?? "")") }
                    throw ExitCode(3)
                }
            }
        } catch let error as DaemonClient.NoDaemon {
            fail("diffctl: \(error.message)", code: 2)
        }
    }

    static func progressLine(_ job: [String: Any]) -> String {
        let progress = job["progress"] as? [String: Any] ?? [:]
        let step = progress["step"] as? Int ?? 0
        let total = max(progress["total"] as? Int ?? 1, 1)
        let width = 30
        let filled = min(width, step * width / total)
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        var eta = ""
        if let seconds = progress["eta_seconds"] as? Double {
            eta = String(format: "  ETA %d:%02d", Int(seconds) / 60, Int(seconds) % 60)
        }
        let stages = progress["stages"] as? Int ?? 1
        let stage = stages > 1 ? "stage \(progress["stage"] ?? 1)/\(stages) " : ""
        return "job \(job["id"] ?? "?") \(job["state"] ?? "?") [\(bar)] \(stage)step \(step)/\(total)  images \(progress["images_done"] ?? 0)/\(progress["count"] ?? 0)\(eta)"
    }
}

/// One job by id, or with `--all` every job that `--user` and `--state` select.
struct JobSelection: ParsableArguments {
    @Argument(help: "The job's id (or --all).") var id: String?
    @Flag(help: "Every job you may change (an operator: everyone's), narrowed by --user and --state.") var all = false
    @Option(help: "With --all: only this user's jobs (name or uid).") var user: String?
    @Option(help: "With --all: only jobs in this state (repeatable).") var state: [String] = []

    func validate() throws {
        guard (id != nil) != all else { throw ValidationError("give a job id or --all") }
        guard all || (user == nil && state.isEmpty) else { throw ValidationError("--user and --state go with --all") }
    }
}

/// cancel, hold and release: one job, or many with --all.
protocol SelectingJobVerb: ParsableCommand {
    static var verb: String { get }
    static var done: String { get }
    var global: Global { get }
    var selection: JobSelection { get }
}

extension SelectingJobVerb {
    func run() throws {
        guard selection.all else {
            let reply = try call(global, ["verb": Self.verb, "id": selection.id!])
            return show(global, job: reply["job"] as? [String: Any] ?? [:], verb: Self.done)
        }
        var request: [String: Any] = ["verb": Self.verb, "all": true]
        if let user = selection.user { request["owner"] = user }
        if !selection.state.isEmpty { request["state"] = selection.state }
        let ids = try call(global, request)["jobs"] as? [String] ?? []
        if global.json { printJSON(ids) } else { print("\(ids.count) job(s) \(Self.done)\(ids.isEmpty ? "" : ": " + ids.joined(separator: ", "))") }
    }
}

struct Cancel: SelectingJobVerb {
    static let configuration = CommandConfiguration(abstract: "Cancel a job, or many (a running one stops at its next step).")
    static let verb = "cancel", done = "canceled"
    @OptionGroup var global: Global
    @OptionGroup var selection: JobSelection
}

struct Hold: SelectingJobVerb {
    static let configuration = CommandConfiguration(abstract: "Hold a queued job, or many, until released.")
    static let verb = "hold", done = "held"
    @OptionGroup var global: Global
    @OptionGroup var selection: JobSelection
}

struct Release: SelectingJobVerb {
    static let configuration = CommandConfiguration(abstract: "Release a held job, or many, into the queue.")
    static let verb = "release", done = "released"
    @OptionGroup var global: Global
    @OptionGroup var selection: JobSelection
}

/// pause, resume, drain: the queue as a whole (operators only).
protocol QueueVerb: ParsableCommand {
    static var verb: String { get }
    var global: Global { get }
}

extension QueueVerb {
    func run() throws {
        let reply = try call(global, ["verb": Self.verb])
        if global.json { return printJSON(reply) }
        let paused = reply["paused"] as? Bool == true
        print(paused ? "queue paused; \(reply["running"] as? Int ?? 0) job(s) running" : "queue running")
    }
}

struct Pause: QueueVerb {
    static let configuration = CommandConfiguration(abstract: "Start no more jobs; running ones finish. Lasts across restarts.")
    static let verb = "pause"
    @OptionGroup var global: Global
}

struct Resume: QueueVerb {
    static let configuration = CommandConfiguration(abstract: "Start jobs again after pause or drain.")
    static let verb = "resume"
    @OptionGroup var global: Global
}

struct Drain: QueueVerb {
    static let configuration = CommandConfiguration(abstract: "Pause, then wait until no job is running.")
    static let verb = "drain"
    @OptionGroup var global: Global
}

struct Retry: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Queue a failed or canceled job again, with fresh attempts.")
    @OptionGroup var global: Global
    @OptionGroup var job: JobID

    func run() throws {
        let reply = try call(global, ["verb": "retry", "id": job.id])
        show(global, job: reply["job"] as? [String: Any] ?? [:], verb: "queued again")
    }
}

struct Priority: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set a job's queue priority (-1000...1000, higher first).")

    @OptionGroup var global: Global
    @OptionGroup var job: JobID
    @Argument(help: "The new priority.") var priority: Int

    func run() throws {
        let reply = try call(global, ["verb": "priority", "id": job.id, "priority": priority])
        show(global, job: reply["job"] as? [String: Any] ?? [:], verb: "priority \(priority)")
    }
}

struct Plugins: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the loaded plugins and their components.")
    @OptionGroup var global: Global

    func run() throws {
        var reply = try call(global, ["verb": "plugins"])
        reply["ok"] = nil
        if global.json { return printJSON(reply) }
        for library in reply["libraries"] as? [[String: Any]] ?? [] {
            print("\(library["name"] ?? "") \(library["version"] ?? "")  \(library["file"] ?? "")")
        }
        for kind in ["schedules", "samplers", "guidance"] {
            for component in reply[kind] as? [[String: Any]] ?? [] {
                print("  \(kind.padding(toLength: 9, withPad: " ", startingAt: 0)) \(component["name"] ?? ""): \(component["summary"] ?? "")")
            }
        }
        for problem in reply["problems"] as? [String] ?? [] { print("refused: \(problem)") }
    }
}

struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the models a job may name.")
    @OptionGroup var global: Global

    func run() throws {
        let models = try call(global, ["verb": "models"])["models"] as? [[String: Any]] ?? []
        if global.json { return printJSON(models) }
        for model in models {
            let classes = (model["class_embeddings"] as? Int).map { "  \($0) class embeddings" } ?? ""
            let size = (model["image_size"] as? [Int]).map { "  \($0[1])x\($0[0])" } ?? ""
            let text = model["text_conditioned"] as? Bool == true ? "  text" : ""
            let upscaler = model["super_resolution"] is [String: Any] ? "  super-resolution" : ""
            let problem = (model["problem"] as? String).map { "  refused: \($0)" } ?? ""
            print("\(model["name"] ?? "")  \(model["path"] ?? "")\(size)\(classes)\(text)\(upscaler)\(model["classifier"] as? Bool == true ? "  classifier" : "")\(problem)")
        }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the queue's counts and the daemon's state.")
    @OptionGroup var global: Global

    func run() throws {
        var reply = try call(global, ["verb": "stats"])
        reply["ok"] = nil
        if global.json { return printJSON(reply) }
        let jobs = reply["jobs"] as? [String: Any] ?? [:]
        print(["queued", "held", "running", "succeeded", "failed", "canceled"].map { "\($0) \(jobs[$0] ?? 0)" }.joined(separator: ", "))
        let running = (reply["running"] as? [String] ?? []).joined(separator: ", ")
        print("running: \(running.isEmpty ? "none" : running); images rendered \(reply["images_rendered"] ?? 0); clients \(reply["clients"] ?? 0)")
        print(String(format: "uptime %.0f s, pid %@; the loop's longest stall %@ ms", reply["uptime_seconds"] as? Double ?? 0,
                     "\(reply["pid"] ?? "")", "\(reply["loop_stall_max_ms"] ?? "?")"))
        let queue = reply["queue"] as? [String: Any] ?? [:]
        print("queue \(queue["backend"] ?? "?") \(queue["database"] ?? ""), this host \(queue["host"] ?? "?")")
        if queue["backend"] as? String == "postgresql" {
            print("leases lost \(reply["leases_lost"] ?? 0), expired leases requeued \(reply["leases_expired"] ?? 0), fenced writes \(reply["fenced_writes"] ?? 0)")
        }
    }
}

struct Ping: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check that the daemon answers.")
    @OptionGroup var global: Global

    func run() throws {
        let reply = try call(global, ["verb": "ping"])
        if global.json { printJSON(reply) } else { print("diffusiond \(reply["version"] ?? "") is running") }
    }
}
