import Foundation

/// The daemon's metrics, with the conventions of Prometheus exporters: counters
/// end in `_total`, durations are seconds, histograms have cumulative `le`
/// buckets with `_sum` and `_count`. Served as OpenMetrics text by the `metrics`
/// verb, and written in Prometheus' text format (what node_exporter's textfile
/// collector reads) to `[metrics] textfile`. Owned by the loop's thread.
struct Metrics {
    enum Format { case openMetrics, prometheus }

    struct Histogram {
        let bounds: [Double]
        var counts: [Int]
        var sum = 0.0
        var count = 0

        init(bounds: [Double]) {
            self.bounds = bounds
            counts = [Int](repeating: 0, count: bounds.count)
        }

        mutating func observe(_ value: Double) {
            for (index, bound) in bounds.enumerated() where value <= bound { counts[index] += 1 }
            sum += value
            count += 1
        }
    }

    var imagesTotal = 0
    var stepsTotal = 0
    var spoolRejectedTotal = 0
    /// Leases this host lost, leases of others it found expired, and writes of
    /// this host's the queue refused for a lease it no longer held.
    var leasesLostTotal = 0
    var leasesExpiredTotal = 0
    var fencedWritesTotal = 0
    /// The longest the loop was kept from its timers (a callback or a query that took long).
    var loopStallMaxSeconds = 0.0
    var modelCacheBytes = 0
    /// Wall time of one batched model step, by model.
    var stepSeconds: [String: Histogram] = [:]
    var queueWaitSeconds = Histogram(bounds: [0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400])
    var batchImages = Histogram(bounds: [1, 2, 4, 8, 16, 32, 64, 128, 256])
    static let stepBounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

    /// One batched step of `model`: `jobs` jobs' steps, `images` images, in `seconds`.
    mutating func recordStep(model: String, jobs: Int, images: Int, seconds: Double, cacheBytes: Int) {
        stepsTotal += jobs
        stepSeconds[model, default: Histogram(bounds: Self.stepBounds)].observe(seconds)
        batchImages.observe(Double(images))
        modelCacheBytes = cacheBytes
    }

    /// The exposition, with the queue's `jobs` by state.
    func text(_ format: Format, jobs: [(state: String, count: Int)], version: String) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            // Prometheus' text format names a counter by its sample, OpenMetrics without `_total`;
            // `info` is OpenMetrics' alone (a gauge of 1 in the other).
            let typed = format == .prometheus && type == "counter" ? "\(name)_total" : format == .prometheus && type == "info" ? "\(name)_info" : name
            let kind = format == .prometheus && type == "info" ? "gauge" : type
            out += "# TYPE \(typed) \(kind)\n# HELP \(typed) \(help)\n"
        }
        func histogram(_ name: String, _ value: Histogram, labels: String) {
            let separator = labels.isEmpty ? "" : ","
            for (bound, count) in zip(value.bounds, value.counts) {
                out += "\(name)_bucket{\(labels)\(separator)le=\"\(bound)\"} \(count)\n"
            }
            out += "\(name)_bucket{\(labels)\(separator)le=\"+Inf\"} \(value.count)\n"
            let braces = labels.isEmpty ? "" : "{\(labels)}"
            out += "\(name)_sum\(braces) \(value.sum)\n\(name)_count\(braces) \(value.count)\n"
        }
        family("diffusiond_build", "info", "The program's version.")
        out += "diffusiond_build_info{version=\"\(Self.escape(version))\"} 1\n"
        family("diffusiond_jobs", "gauge", "Jobs in the queue, by state.")
        for (state, count) in jobs { out += "diffusiond_jobs{state=\"\(state)\"} \(count)\n" }
        /// One unlabelled sample and its family: a counter's sample is named `_total`.
        func scalar(_ name: String, _ type: String, _ help: String, _ value: Any) {
            family(name, type, help)
            out += "\(name)\(type == "counter" ? "_total" : "") \(value)\n"
        }
        scalar("diffusiond_images", "counter", "Images rendered since the daemon started.", imagesTotal)
        scalar("diffusiond_steps", "counter", "Sampling steps of jobs done since the daemon started.", stepsTotal)
        scalar("diffusiond_spool_rejected", "counter", "Spool files rejected since the daemon started.", spoolRejectedTotal)
        scalar("diffusiond_leases_lost", "counter", "Leases of this host's renders another host took (not renewed in time).", leasesLostTotal)
        scalar("diffusiond_leases_expired", "counter", "Expired leases of stopped or cut-off hosts this host requeued.", leasesExpiredTotal)
        scalar("diffusiond_fenced_writes", "counter", "Writes of this host's that the queue refused: the job's lease was no longer its.",
               fencedWritesTotal)
        scalar("diffusiond_loop_stall_max_seconds", "gauge", "The longest the event loop was kept from its timers since the daemon started.",
               loopStallMaxSeconds)
        scalar("diffusiond_model_cache_bytes", "gauge", "Weight bytes of the models the render worker holds.", modelCacheBytes)
        family("diffusiond_step_seconds", "histogram", "Wall time of one batched model step, by model.")
        for model in stepSeconds.keys.sorted() {
            histogram("diffusiond_step_seconds", stepSeconds[model]!, labels: "model=\"\(Self.escape(model))\"")
        }
        family("diffusiond_queue_wait_seconds", "histogram", "Time from submission to a job's start.")
        histogram("diffusiond_queue_wait_seconds", queueWaitSeconds, labels: "")
        family("diffusiond_batch_images", "histogram", "Images in one batched model step.")
        histogram("diffusiond_batch_images", batchImages, labels: "")
        if format == .openMetrics { out += "# EOF\n" }
        return out
    }

    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
