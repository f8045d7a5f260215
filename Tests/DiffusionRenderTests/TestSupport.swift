import DiffusionRender
import Foundation

enum TestSupport {
    /// The build directory holding the plugins `swift build` made beside the tests.
    static let buildDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        .deletingLastPathComponent().path

    /// The registry of the plugins this package builds.
    static let registry = PluginRegistry(directories: [buildDirectory])

    /// The model directories jobs name models in.
    static let models = ModelResolver(directories: [fixtures])

    static let fixtures = Bundle.module.resourceURL!.appendingPathComponent("Fixtures").path

    static func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("render-tests-\(UUID())").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The package root, for the plugin header when a test compiles a plugin.
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
}
