import DiffusionDaemon
import Foundation
import Testing

/// The metrics as a monitoring system reads them: parsed by Prometheus' own
/// Python client (installed from PyPI into a test folder), both formats.
@Suite(.serialized) struct MetricsTests {
    /// A Python that imports prometheus_client, installed once into /tmp.
    static let python: (path: String, environment: String)? = {
        let target = "/tmp/diffusiond-test-python"
        let check = ["-c", "import prometheus_client"]
        setenv("PYTHONPATH", target, 1)
        if (try? DaemonProcess.run("/usr/bin/env", ["python3"] + check))?.status == 0 { return ("python3", target) }
        _ = try? DaemonProcess.run("/usr/bin/env", ["python3", "-m", "pip", "install", "--quiet", "--target", target, "prometheus_client"])
        return (try? DaemonProcess.run("/usr/bin/env", ["python3"] + check))?.status == 0 ? ("python3", target) : nil
    }()

    /// Parses `text` with the client's parser for `format`; returns "family type samples..." lines or the error.
    static func parse(_ text: String, openMetrics: Bool) throws -> DaemonProcess.Outcome {
        let file = "/tmp/diffusiond-metrics-\(getpid()).txt"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let parser = openMetrics ? "from prometheus_client.openmetrics.parser import text_string_to_metric_families"
                                 : "from prometheus_client.parser import text_string_to_metric_families"
        let script = """
            \(parser)
            for f in text_string_to_metric_families(open('\(file)').read()):
                for s in f.samples:
                    print(f.name, f.type, s.name, sorted(s.labels.items()), float(s.value))
            """
        return try DaemonProcess.run("/usr/bin/env", ["python3", "-c", script])
    }

    @Test func openMetricsAndTheTextfileParse() throws {
        let python = try #require(Self.python, "prometheus_client could not be installed from PyPI")
        setenv("PYTHONPATH", python.environment, 1)
        let daemon = try DaemonProcess(extra: "[metrics]\ntextfile = \"state/metrics.prom\"\ninterval_seconds = 0.2", batchImages: 4)
        let a = try daemon.submit(DaemonProcess.smallJob(steps: 5, count: 2))
        let b = try daemon.submit(DaemonProcess.smallJob(steps: 5, count: 2, seed: 2))
        try daemon.wait(for: a, state: "succeeded")
        try daemon.wait(for: b, state: "succeeded")
        try daemon.drop("bad.json", "not json")
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: "\(daemon.state)/spool/rejected/bad.error") && Date() < deadline { usleep(50_000) }

        let shown = try daemon.diffctl(["metrics"])
        #expect(shown.status == 0 && shown.stdout.hasSuffix("# EOF\n"))
        let open = try Self.parse(shown.stdout, openMetrics: true)
        #expect(open.status == 0, "\(open.stderr)")
        let samples = open.stdout
        #expect(samples.contains("diffusiond_images counter diffusiond_images_total [] 4.0"), "\(samples)")
        #expect(samples.contains("diffusiond_steps counter diffusiond_steps_total [] 10.0"))
        #expect(samples.contains("diffusiond_jobs gauge diffusiond_jobs [('state', 'succeeded')] 2.0"))
        #expect(samples.contains("diffusiond_spool_rejected counter diffusiond_spool_rejected_total [] 1.0"))
        #expect(samples.contains("diffusiond_build info diffusiond_build_info [('version', '0.1.0')] 1.0"))
        #expect(samples.contains("diffusiond_step_seconds histogram diffusiond_step_seconds_count [('model', 'fashion-mnist')]"))
        #expect(samples.contains("diffusiond_queue_wait_seconds histogram diffusiond_queue_wait_seconds_count [] 2.0"))
        #expect(samples.contains("diffusiond_batch_images histogram diffusiond_batch_images_bucket [('le', '4.0')]"))
        #expect(samples.range(of: #"diffusiond_model_cache_bytes gauge diffusiond_model_cache_bytes \[\] [1-9]"#, options: .regularExpression) != nil)

        // The textfile, in Prometheus' text format, replaced whole each interval.
        usleep(500_000)
        let textfile = try String(contentsOfFile: "\(daemon.state)/metrics.prom", encoding: .utf8)
        let text = try Self.parse(textfile, openMetrics: false)
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("diffusiond_images counter diffusiond_images_total [] 4.0"), "\(text.stdout)")
        #expect(text.stdout.contains("diffusiond_build_info gauge diffusiond_build_info [('version', '0.1.0')] 1.0"))
        #expect(daemon.stop() == 0)
    }
}
