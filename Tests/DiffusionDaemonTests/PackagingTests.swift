import DiffusionDaemon
import Foundation
import Testing

/// `make stage` into a DESTDIR, as a Debian package build would, and the staged
/// tree used as installed: programs, plugins, model, units, man pages, header.
@Suite struct PackagingTests {
    @Test func aStagedInstallHoldsWhatAPackageNeeds() throws {
        let root = try DaemonProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let stage = "\(root)/stage"
        let made = try DaemonProcess.run("/usr/bin/make", ["-C", DaemonProcess.packageRoot, "--no-print-directory", "stage",
                                                           "DESTDIR=\(stage)", "PREFIX=/usr", "BIN=\(DaemonProcess.buildDirectory)"])
        #expect(made.status == 0, "\(made.stderr)")
        let expected = [
            "usr/bin/diffusiond", "usr/bin/diffctl", "usr/lib/diffusiond/plugins/libdiffusion-plugin-ddim.so",
            "usr/share/diffusiond/models/fashion-mnist/unet/config.json",
            "usr/share/diffusiond/models/fashion-mnist-text/tokenizer/vocab.json",
            "usr/share/diffusiond/models/fashion-mnist-sr/unet/config.json", "etc/diffusiond/diffusiond.toml",
            "usr/lib/systemd/system/diffusiond.service", "usr/lib/systemd/system/diffusiond.socket",
            "usr/lib/sysusers.d/diffusiond.conf", "usr/lib/tmpfiles.d/diffusiond.conf",
            "usr/include/diffusiond/diffusion_plugin.h", "usr/lib/pkgconfig/diffusion-plugin.pc",
            "usr/share/man/man1/diffctl.1", "usr/share/man/man8/diffusiond.8", "usr/share/man/man5/diffusiond.toml.5",
            "usr/share/man/man5/diffusiond-jobs.5", "usr/share/bash-completion/completions/diffctl",
            "usr/share/zsh/site-functions/_diffctl", "usr/share/fish/vendor_completions.d/diffctl.fish",
            "usr/share/doc/diffusiond/protocol.md", "usr/share/doc/diffusiond/examples/cascade.json",
        ]
        for path in expected { #expect(FileManager.default.fileExists(atPath: "\(stage)/\(path)"), "\(path) is missing") }
        let unit = try String(contentsOfFile: "\(stage)/usr/lib/systemd/system/diffusiond.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/usr/bin/diffusiond") && !unit.contains("/usr/local"))

        // The staged programs find their own plugins and model.
        try #"{"model": "fashion-mnist", "steps": 3, "seed": 1}"#.write(toFile: "\(root)/job.json", atomically: true, encoding: .utf8)
        let planned = try DaemonProcess.run("\(stage)/usr/bin/diffusiond", ["render", "\(root)/job.json", "--dry-run"])
        #expect(planned.status == 0, "\(planned.stderr)")

        // Man pages render without a warning; completions are valid shell.
        for page in ["man1/diffctl.1", "man8/diffusiond.8", "man5/diffusiond.toml.5", "man5/diffusiond-jobs.5"] {
            let shown = try DaemonProcess.run("/usr/bin/groff", ["-k", "-man", "-Tutf8", "-ww", "-z", "\(stage)/usr/share/man/\(page)"])
            #expect(shown.status == 0 && shown.stderr.isEmpty, "\(page): \(shown.stderr)")
        }
        #expect(try DaemonProcess.run("/bin/bash", ["-n", "\(stage)/usr/share/bash-completion/completions/diffctl"]).status == 0)

        // A plugin builds against the staged header through pkg-config.
        let source = "\(root)/p.c"
        try "#include <diffusion_plugin.h>\nconst struct dfn_plugin *diffusion_plugin_init(const struct dfn_host *h) { return 0; }\n"
            .write(toFile: source, atomically: true, encoding: .utf8)
        let flags = try DaemonProcess.run("/usr/bin/env", ["PKG_CONFIG_SYSROOT_DIR=\(stage)", "PKG_CONFIG_LIBDIR=\(stage)/usr/lib/pkgconfig",
                                                           "pkg-config", "--cflags", "diffusion-plugin"])
        #expect(flags.status == 0 && flags.stdout.contains("-I\(stage)/usr/include/diffusiond"), "\(flags)")
        let compiled = try DaemonProcess.run("/usr/bin/cc", ["-shared", "-fPIC", flags.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                                                             "-o", "\(root)/libdiffusion-plugin-p.so", source])
        #expect(compiled.status == 0, "\(compiled.stderr)")
        // pkg-config's abi variable is the header's DFN_ABI_MAJOR.DFN_ABI_MINOR.
        let abi = try DaemonProcess.run("/usr/bin/env", ["PKG_CONFIG_SYSROOT_DIR=\(stage)", "PKG_CONFIG_LIBDIR=\(stage)/usr/lib/pkgconfig",
                                                         "pkg-config", "--variable=abi", "diffusion-plugin"])
        let header = try String(contentsOfFile: "\(stage)/usr/include/diffusiond/diffusion_plugin.h", encoding: .utf8)
        func define(_ name: String) -> String? {
            header.split(separator: "\n").first { $0.hasPrefix("#define \(name) ") }.map { String($0.split(separator: " ")[2]) }
        }
        #expect(abi.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(define("DFN_ABI_MAJOR") ?? "?").\(define("DFN_ABI_MINOR") ?? "?")")
    }
}
