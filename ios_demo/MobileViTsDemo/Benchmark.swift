import Foundation

/// One benchmark cell, in the order the schema describes: cold load -> first inference -> release ->
/// warm load -> `warmup` untimed runs -> timed runs, all on the bundled test image.
/// The XCTest target times the last step with measure(metrics:options:) instead of `timedRuns`.
final class BenchSession {
    let entry: ModelEntry
    let computeUnits: ComputeUnits?
    let input: [Float]
    let runner: ModelRunner
    let loadMsCold: Double
    let loadMsWarm: Double
    let firstInferenceMs: Double

    /// Loads twice and runs once; a Core ML package must be compiled first (ModelFiles.compiledModel, not timed).
    init(entry: ModelEntry, directory: URL, computeUnits: ComputeUnits?, compiledURL: URL?) throws {
        let units: ComputeUnits? = entry.isCoreML ? (computeUnits ?? .all) : nil
        let image = try Preprocessor.testImage(for: entry, in: directory)
        let values = try Preprocessor.input(from: image, entry: entry, prepared: entry.testImage.prepared)

        var t0 = DispatchTime.now()
        let coldMs: Double, firstMs: Double
        do {  // the cold instance lives in this scope only: released before the warm load
            let cold = try Runners.load(entry, directory: directory, computeUnits: units, compiledURL: compiledURL)
            coldMs = BenchSession.ms(since: t0)
            t0 = DispatchTime.now()
            _ = try cold.run(values)
            firstMs = BenchSession.ms(since: t0)
        }

        t0 = DispatchTime.now()
        let warm = try Runners.load(entry, directory: directory, computeUnits: units, compiledURL: compiledURL)
        let warmMs = BenchSession.ms(since: t0)

        self.entry = entry
        self.computeUnits = units
        self.input = values
        self.runner = warm
        self.loadMsCold = coldMs
        self.loadMsWarm = warmMs
        self.firstInferenceMs = firstMs
    }

    func warmUp(_ count: Int) throws {
        for _ in 0..<count { _ = try runner.run(input) }
    }

    /// `iterations` timed runs; returns the samples and the last logits.
    func timedRuns(_ iterations: Int) throws -> (samples: [Double], logits: [Float]) {
        var samples: [Double] = []
        samples.reserveCapacity(iterations)
        var logits: [Float] = []
        for _ in 0..<iterations {
            let t0 = DispatchTime.now()
            logits = try runner.run(input)
            samples.append(Self.ms(since: t0))
        }
        return (samples, logits)
    }

    func result(warmup: Int, samples: [Double], logits: [Float]) -> BenchResult {
        let best = topK(logits, 1).first?.index ?? -1
        let runtime = entry.isCoreML ? "coreml (iOS \(DeviceInfo.collect().osVersion))" : "executorch \(BenchSession.executorchVersion)"
        return BenchResult(
            device: DeviceInfo.collect(), model: entry.name, architecture: entry.architecture, artifact: entry.file,
            backend: entry.backend, delegate: entry.delegate, precision: entry.precision, resolution: entry.resolution,
            computeUnits: computeUnits?.rawValue, warmup: warmup, iterations: samples.count,
            loadMsCold: loadMsCold, loadMsWarm: loadMsWarm, firstInferenceMs: firstInferenceMs,
            samplesMs: samples, stats: Stats.of(samples),
            top1: Top1(index: best, label: entry.label(best), expectedIndex: entry.expected.top1Index),
            runtimeVersion: runtime, timestamp: ISO8601DateFormatter().string(from: Date()))
    }

    /// The Swift package branch in project.yml.
    static let executorchVersion = "1.5.0 (swiftpm-1.5.0)"

    static func ms(since t0: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e6
    }

    /// Documents/bench/<model>.json (.pte) or Documents/bench/<model>_<compute_units>.json (.mlpackage).
    static func resultURL(model: String, computeUnits: ComputeUnits?) throws -> URL {
        let docs = try FileManager.default.url(for: .documentDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let dir = docs.appendingPathComponent("bench", isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let name = computeUnits.map { "\(model)_\($0.rawValue)" } ?? model
        return dir.appendingPathComponent("\(name).json")
    }
}

/// Bench mode for the devicectl route (the XCTest route is MobileViTsDemoTests/LatencyTests):
///   xcrun devicectl device process launch --device UDID --terminate-existing --console org.mobilevits.demo \
///       -- --bench --model NAME [--compute-units all,cpu_and_ne] [--warmup 10] [--iterations 50]
/// writes Documents/bench/<model>[_<compute_units>].json atomically, prints "mobilevits-bench: done <path>",
/// then exits.
enum BenchMode {
    struct Options {
        var model: String
        var computeUnits: [ComputeUnits]
        var warmup = 10
        var iterations = 50
    }

    static func options(from arguments: [String]) -> Options? {
        guard arguments.contains("--bench") else { return nil }
        func value(_ flag: String) -> String? {
            guard let i = arguments.firstIndex(of: flag), i + 1 < arguments.count else { return nil }
            return arguments[i + 1]
        }
        var o = Options(model: value("--model") ?? "", computeUnits: [])
        o.computeUnits = (value("--compute-units") ?? "all").split(separator: ",").compactMap { ComputeUnits(rawValue: String($0)) }
        o.warmup = value("--warmup").flatMap(Int.init) ?? o.warmup
        o.iterations = value("--iterations").flatMap(Int.init) ?? o.iterations
        return o
    }

    static func run(_ o: Options) async -> Int32 {
        do {
            guard let directory = AppManifest.bundledDirectory else { throw DemoError("no Models/ folder in the app bundle") }
            let manifest = try AppManifest.load(from: directory)
            guard let entry = manifest.models.first(where: { $0.name == o.model }) else {
                throw DemoError("no model '\(o.model)' in Models/manifest.json; have \(manifest.models.map(\.name))")
            }
            guard o.iterations >= 1, o.warmup >= 0 else { throw DemoError("iterations must be >= 1, warmup >= 0") }
            var compiled: URL?
            if entry.isCoreML { compiled = try await ModelFiles.compiledModel(for: entry, in: directory) }
            let cells: [ComputeUnits?] = entry.isCoreML ? (o.computeUnits.isEmpty ? [.all] : o.computeUnits.map { $0 }) : [nil]
            for units in cells {
                let session = try BenchSession(entry: entry, directory: directory, computeUnits: units, compiledURL: compiled)
                try session.warmUp(o.warmup)
                let (samples, logits) = try session.timedRuns(o.iterations)
                let url = try BenchSession.resultURL(model: entry.name, computeUnits: units)
                try session.result(warmup: o.warmup, samples: samples, logits: logits).jsonData().write(to: url, options: .atomic)
                print("mobilevits-bench: done \(url.path)")
            }
            return 0
        } catch {
            print("mobilevits-bench: failed: \(error.localizedDescription)")
            return 1
        }
    }
}
