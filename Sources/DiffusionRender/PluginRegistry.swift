import DiffusionPluginABI
import Foundation

/// The plugins found in the configured directories, and their components by name.
///
/// Loading enforces exactly the rules `diffusion_plugin.h` states, so a
/// directory that also holds other libraries (such as `.build/release`) is
/// scanned safely and a bad plugin never takes the host down:
/// - a directory is scanned once, however many names (symbolic links) lead to
///   it, and only when neither it nor a file in it can be changed by another
///   user: world-writable, or owned by a user other than root and the one
///   running the host, is refused, for the directory and for each file;
/// - only regular files named `libdiffusion-plugin-NAME.so` are considered;
///   a symbolic link is refused, not followed;
/// - libraries open with `RTLD_NOW | RTLD_LOCAL` and are never closed, so every
///   pointer a plugin hands out stays valid;
/// - a struct whose ABI major differs from the host's, or whose minor is newer,
///   is refused with both versions named; one whose `size` is smaller than its
///   own minor defines is refused; fields past a struct's `size` (added in a
///   later minor) are never read;
/// - a required slot left NULL is refused with the slot's name;
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
        /// The ABI minor the component was built for: slots it added are read only when ≥ it.
        public let minor: Int
        let descriptor: UnsafePointer<Descriptor>
    }

    public static let filePattern = "libdiffusion-plugin-*.so"

    public private(set) var libraries: [Library] = []
    public private(set) var schedules: [String: Component<dfn_schedule>] = [:]
    public private(set) var samplers: [String: Component<dfn_sampler>] = [:]
    public private(set) var guidances: [String: Component<dfn_guidance>] = [:]
    /// The sampler each diffusers scheduler class names (the samplers' own declarations).
    public private(set) var samplerClasses: [String: String] = [:]
    public private(set) var problems: [String] = []

    public init(directories: [String]) {
        var scanned: Set<String> = []
        for directory in directories {
            guard let resolved = realpath(directory, nil) else { continue }
            let real = String(cString: resolved)
            free(resolved)
            guard scanned.insert(real).inserted else { continue }
            if let problem = Self.ownershipProblem(real, directory: true) {
                refuse(directory, problem)
                continue
            }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: real)) ?? []
            for name in names.sorted() where Self.isPluginFileName(name) {
                load("\(real)/\(name)")
            }
        }
    }

    /// Why `path` may not be trusted: another user could change it.
    static func ownershipProblem(_ path: String, directory: Bool) -> String? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return String(cString: strerror(errno)) }
        let kind = info.st_mode & S_IFMT
        if directory {
            guard kind == S_IFDIR else { return "not a directory" }
        } else {
            guard kind != S_IFLNK else { return "a symbolic link (plugins are loaded from regular files only)" }
            guard kind == S_IFREG else { return "not a regular file" }
        }
        guard info.st_mode & S_IWOTH == 0 else { return "it is world-writable" }
        guard info.st_uid == 0 || info.st_uid == geteuid() else {
            return "it is owned by uid \(info.st_uid), neither root nor this user"
        }
        return nil
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
        if let problem = Self.ownershipProblem(file, directory: false) { return refuse(file, problem) }
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
        if let problem = Self.versionProblem(plugin.pointee.abi_version, plugin.pointee.size, sizes: Self.pluginSizes) {
            return refuse(file, problem)
        }
        let descriptor = plugin.pointee
        guard descriptor.name != nil else { return refuse(file, "its descriptor's required slot name is NULL") }
        let library = Library(file: file, name: Self.text(descriptor.name), version: Self.text(descriptor.version))
        libraries.append(library)
        for i in 0..<Int(descriptor.schedule_count) {
            guard let schedule = descriptor.schedules?[i] else { continue }
            let s = schedule.pointee
            register(schedule, name: s.name, version: s.abi_version, size: s.size, sizes: Self.scheduleSizes,
                     slots: [("name", s.name != nil), ("betas", s.betas != nil)], into: &schedules, file: file)
        }
        for i in 0..<Int(descriptor.sampler_count) {
            guard let sampler = descriptor.samplers?[i] else { continue }
            let s = sampler.pointee
            var slots = [("name", s.name != nil), ("create", s.create != nil), ("destroy", s.destroy != nil),
                         ("set_timesteps", s.set_timesteps != nil), ("step", s.step != nil),
                         ("save_state", s.save_state != nil), ("restore_state", s.restore_state != nil)]
            let minor = Int(s.abi_version & 0xffff)
            if minor >= 1, Self.versionProblem(s.abi_version, s.size, sizes: Self.samplerSizes) == nil {
                slots += [("describe", s.describe != nil), ("init_noise_sigma", s.init_noise_sigma != nil)]
            }
            guard register(sampler, name: s.name, version: s.abi_version, size: s.size, sizes: Self.samplerSizes,
                           slots: slots, into: &samplers, file: file)
            else { continue }
            if minor >= 1, let classes = s.diffusers_classes {
                var i = 0
                while let name = classes[i] {
                    let className = String(cString: name)
                    if let taken = samplerClasses[className] {
                        refuse(file, "sampler \(Self.text(s.name)) claims \(className), which sampler \(taken) already implements")
                    } else {
                        samplerClasses[className] = Self.text(s.name)
                    }
                    i += 1
                }
            }
        }
        for i in 0..<Int(descriptor.guidance_count) {
            guard let guidance = descriptor.guidances?[i] else { continue }
            let g = guidance.pointee
            register(guidance, name: g.name, version: g.abi_version, size: g.size, sizes: Self.guidanceSizes,
                     slots: [("name", g.name != nil), ("create", g.create != nil), ("destroy", g.destroy != nil),
                             ("needs", g.needs != nil), ("combine", g.combine != nil),
                             ("save_state and restore_state (both or neither)", (g.save_state == nil) == (g.restore_state == nil))],
                     into: &guidances, file: file)
        }
    }

    /// Adds a component that passes the header's rules; false (and one refusal) when it does not.
    @discardableResult
    private func register<Descriptor>(
        _ descriptor: UnsafePointer<Descriptor>, name: UnsafePointer<CChar>?, version: UInt32, size: UInt32, sizes: [Int],
        slots: [(String, Bool)], into table: inout [String: Component<Descriptor>], file: String
    ) -> Bool {
        let name = Self.text(name)
        if let problem = Self.versionProblem(version, size, sizes: sizes) {
            refuse(file, "component \(name.isEmpty ? "?" : name): \(problem)")
            return false
        }
        if let missing = slots.first(where: { !$0.1 }) {
            refuse(file, "component \(name.isEmpty ? "?" : name): its required slot \(missing.0) is NULL")
            return false
        }
        if let existing = table[name] {
            refuse(file, "component \(name) is already provided by \(existing.file)")
            return false
        }
        let summary = Self.text(UnsafeRawPointer(descriptor).load(fromByteOffset: Self.summaryOffset,
                                                                   as: UnsafePointer<CChar>?.self))
        table[name] = Component(name: name, summary: summary, file: file, minor: Int(version & 0xffff), descriptor: descriptor)
        return true
    }

    /// Each struct's size at each minor version of this ABI major, index = minor:
    /// a struct of minor m must be at least sizes[m] bytes. A minor that adds a
    /// field appends the struct's new size (the offset of the next field added).
    static let pluginSizes = [MemoryLayout<dfn_plugin>.size, MemoryLayout<dfn_plugin>.size]
    static let scheduleSizes = [MemoryLayout<dfn_schedule>.size, MemoryLayout<dfn_schedule>.size]
    /// 1.1 appended diffusers_classes, describe and init_noise_sigma to dfn_sampler.
    static let samplerSizes = [MemoryLayout<dfn_sampler>.offset(of: \dfn_sampler.diffusers_classes)!,
                               MemoryLayout<dfn_sampler>.size]
    static let guidanceSizes = [MemoryLayout<dfn_guidance>.size, MemoryLayout<dfn_guidance>.size]
    /// Every component struct starts {abi_version, size, name, summary}.
    static let summaryOffset = MemoryLayout<dfn_schedule>.offset(of: \dfn_schedule.summary)!

    /// Why a struct of `version` and `size` cannot be used by a host of
    /// `host` whose struct grew as `sizes` says, or nil.
    static func versionProblem(_ version: UInt32, _ size: UInt32, sizes: [Int],
                               host: UInt32 = PluginHost.abiVersion) -> String? {
        let minor = Int(version & 0xffff)
        if version >> 16 != host >> 16 || minor > Int(host & 0xffff) || minor >= sizes.count {
            return "built for plugin ABI \(versionText(version)), this host speaks \(versionText(host))"
        }
        if Int(size) < sizes[minor] {
            return "its struct is \(size) bytes, smaller than the \(sizes[minor]) that ABI \(versionText(version)) defines"
        }
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
