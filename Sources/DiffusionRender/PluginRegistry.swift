import DiffusionPluginABI
import Foundation

/// The plugins found in the configured directories, and their components by name.
///
/// Loading follows fixed rules, so a directory that also holds other libraries
/// (such as `.build/release`) is scanned safely and a bad plugin never takes the
/// host down:
/// - only regular files named `libdiffusion-plugin-NAME.so` are considered;
/// - a file that is world-writable, or owned by a user other than root and the
///   one running the host, is refused before it is opened;
/// - libraries open with `RTLD_NOW | RTLD_LOCAL` and are never closed, so every
///   pointer a plugin hands out stays valid;
/// - a plugin whose ABI major differs from the host's, or whose minor is newer,
///   is refused with both versions named;
/// - a component name already taken is refused, naming both files.
/// Each refusal is one log line and one entry of `problems`.
public final class PluginRegistry: @unchecked Sendable {
    public struct Library: Sendable {
        public let file: String
        public let name: String
        public let version: String
    }

    public struct Component<Descriptor>: @unchecked Sendable {
        public let name: String
        public let summary: String
        public let file: String
        let descriptor: UnsafePointer<Descriptor>
    }

    public static let filePattern = "libdiffusion-plugin-*.so"

    public private(set) var libraries: [Library] = []
    public private(set) var schedules: [String: Component<dfn_schedule>] = [:]
    public private(set) var samplers: [String: Component<dfn_sampler>] = [:]
    public private(set) var guidances: [String: Component<dfn_guidance>] = [:]
    public private(set) var problems: [String] = []

    public init(directories: [String]) {
        for directory in directories {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            for name in names.sorted() where Self.isPluginFileName(name) {
                load("\(directory)/\(name)")
            }
        }
    }

    static func isPluginFileName(_ name: String) -> Bool {
        name.hasPrefix("libdiffusion-plugin-") && name.hasSuffix(".so") && name.count > "libdiffusion-plugin-.so".count
    }

    private func refuse(_ file: String, _ reason: String) {
        let line = "plugin \(file) not loaded: \(reason)"
        problems.append(line)
        PluginHost.log(line)
    }

    private func load(_ file: String) {
        var info = stat()
        guard stat(file, &info) == 0 else { return refuse(file, String(cString: strerror(errno))) }
        guard info.st_mode & S_IFMT == S_IFREG else { return refuse(file, "not a regular file") }
        guard info.st_mode & S_IWOTH == 0 else { return refuse(file, "it is world-writable") }
        guard info.st_uid == 0 || info.st_uid == geteuid() else {
            return refuse(file, "it is owned by uid \(info.st_uid), neither root nor this user")
        }
        guard let handle = dlopen(file, RTLD_NOW | RTLD_LOCAL) else {
            return refuse(file, dlerror().map { String(cString: $0) } ?? "dlopen failed")
        }
        guard let symbol = dlsym(handle, DFN_PLUGIN_ENTRY) else {
            return refuse(file, "it does not export \(DFN_PLUGIN_ENTRY)")
        }
        let initialize = unsafeBitCast(symbol, to: dfn_plugin_init_fn.self)
        guard let plugin = initialize(PluginHost.table) else {
            return refuse(file, "it declined this host (plugin ABI \(Self.versionText(PluginHost.abiVersion)))")
        }
        if let problem = Self.versionProblem(plugin.pointee.abi_version, plugin.pointee.size,
                                             minimumSize: MemoryLayout<dfn_plugin>.size) {
            return refuse(file, problem)
        }
        let descriptor = plugin.pointee
        let library = Library(file: file, name: Self.text(descriptor.name), version: Self.text(descriptor.version))
        libraries.append(library)
        for i in 0..<Int(descriptor.schedule_count) {
            guard let schedule = descriptor.schedules?[i] else { continue }
            register(schedule, name: schedule.pointee.name, summary: schedule.pointee.summary,
                     version: schedule.pointee.abi_version, size: schedule.pointee.size, into: &schedules, file: file)
        }
        for i in 0..<Int(descriptor.sampler_count) {
            guard let sampler = descriptor.samplers?[i] else { continue }
            register(sampler, name: sampler.pointee.name, summary: sampler.pointee.summary,
                     version: sampler.pointee.abi_version, size: sampler.pointee.size, into: &samplers, file: file)
        }
        for i in 0..<Int(descriptor.guidance_count) {
            guard let guidance = descriptor.guidances?[i] else { continue }
            register(guidance, name: guidance.pointee.name, summary: guidance.pointee.summary,
                     version: guidance.pointee.abi_version, size: guidance.pointee.size, into: &guidances, file: file)
        }
    }

    private func register<Descriptor>(
        _ descriptor: UnsafePointer<Descriptor>, name: UnsafePointer<CChar>?, summary: UnsafePointer<CChar>?,
        version: UInt32, size: UInt32, into table: inout [String: Component<Descriptor>], file: String
    ) {
        let name = Self.text(name)
        if let problem = Self.versionProblem(version, size, minimumSize: MemoryLayout<Descriptor>.size) {
            return refuse(file, "component \(name): \(problem)")
        }
        if let existing = table[name] {
            return refuse(file, "component \(name) is already provided by \(existing.file)")
        }
        table[name] = Component(name: name, summary: Self.text(summary), file: file, descriptor: descriptor)
    }

    /// Why a struct of `version` and `size` cannot be used, or nil.
    static func versionProblem(_ version: UInt32, _ size: UInt32, minimumSize: Int) -> String? {
        let host = PluginHost.abiVersion
        if version >> 16 != host >> 16 || version & 0xffff > host & 0xffff {
            return "built for plugin ABI \(versionText(version)), this host speaks \(versionText(host))"
        }
        if Int(size) < minimumSize { return "its descriptor is \(size) bytes, smaller than ABI \(versionText(version)) defines" }
        return nil
    }

    static func versionText(_ version: UInt32) -> String { "\(version >> 16).\(version & 0xffff)" }

    static func text(_ pointer: UnsafePointer<CChar>?) -> String { pointer.map { String(cString: $0) } ?? "" }

    /// The plugin directories a program finds without configuration: beside its
    /// own executable (a `swift build` tree), and PREFIX/lib/diffusiond/plugins
    /// for an executable installed in PREFIX/bin (`make install`).
    public static func defaultDirectories() -> [String] {
        let directory = executableDirectory
        return [directory, URL(fileURLWithPath: "\(directory)/../lib/diffusiond/plugins").standardized.path]
    }

    /// The running program's directory (/proc/self/exe, whatever PATH found it by).
    public static var executableDirectory: String {
        let path = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: path).resolvingSymlinksInPath().deletingLastPathComponent().path
    }
}
