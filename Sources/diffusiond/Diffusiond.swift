// diffusiond: the render daemon's command line. The work happens in the library
// modules; this file only parses arguments and prints.
import ArgumentParser
import DiffusionRender
import Foundation

@main
struct Diffusiond: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A batch render daemon for diffusion models on CPUs.",
        subcommands: [RenderJob.self])
}

struct RenderJob: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "render", abstract: "Render one job file into a directory, without a daemon.")

    @Argument(help: "The job file (docs/jobs.md).") var job: String
    @Option(help: "The directory for the images (created).") var output: String
    @Option(name: .customLong("models"), help: "A directory of named models (repeatable).") var modelDirectories: [String] = []
    @Option(name: .customLong("plugins"), help: "A plugin directory (repeatable; default: beside this program and the installed one).")
    var pluginDirectories: [String] = []
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Flag(help: "No progress lines.") var quiet = false

    func run() throws {
        var render = OneShotRender()
        render.modelDirectories = modelDirectories
        if !pluginDirectories.isEmpty { render.pluginDirectories = pluginDirectories }
        if let threads {
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
            render.threads = threads
        }
        do {
            let done = try render.run(jobPath: job, outputDirectory: output) { step, total in
                if !quiet && (step == total || step % max(total / 10, 1) == 0) {
                    FileHandle.standardError.write(Data("step \(step)/\(total)\n".utf8))
                }
            }
            print("rendered \(done.job.count) image(s) with \(done.samplerName) in \(done.timesteps.count) steps into \(output)")
        } catch let error as RenderError {
            FileHandle.standardError.write(Data("diffusiond: \(error.message)\n".utf8))
            throw ExitCode(1)
        }
    }
}
