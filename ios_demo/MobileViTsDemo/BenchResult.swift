import Foundation

/*
 The bench result JSON: ONE schema for both apps, mobilevits/workflows/schemas/bench_result.schema.json, parsed
 by `mobilevits bench --device ios...` (mobilevits.workflows.app_assets.load_bench_result).
 tests/test_app_assets.py reads the CodingKeys of each struct below and checks them against the schema
 (BenchResult = the root object, DeviceInfo = "device", Stats = "stats", Top1 = "top1"), so renaming a
 field on one side fails that test. encode(to:) writes every key, nil as null (synthesized Encodable
 would drop nil keys, and several required fields are nullable).
 */

struct BenchResult: Encodable {
    static let schemaVersion = 1

    let device: DeviceInfo
    let model: String
    let architecture: String
    let artifact: String
    let backend: String
    let delegate: String
    let precision: String
    let resolution: Int
    let computeUnits: String?
    let warmup: Int
    let iterations: Int
    let loadMsCold: Double
    let loadMsWarm: Double?
    let firstInferenceMs: Double
    let samplesMs: [Double]
    let stats: Stats
    let top1: Top1
    let runtimeVersion: String
    let timestamp: String

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case app = "app"
        case device = "device"
        case model = "model"
        case architecture = "architecture"
        case artifact = "artifact"
        case backend = "backend"
        case delegate = "delegate"
        case precision = "precision"
        case resolution = "resolution"
        case computeUnits = "compute_units"
        case threads = "threads"
        case warmup = "warmup"
        case iterations = "iterations"
        case loadMsCold = "load_ms_cold"
        case loadMsWarm = "load_ms_warm"
        case firstInferenceMs = "first_inference_ms"
        case samplesMs = "samples_ms"
        case stats = "stats"
        case top1 = "top1"
        case runtimeVersion = "runtime_version"
        case timestamp = "timestamp"
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(Self.schemaVersion, forKey: .schemaVersion)
        try c.encode("ios_demo", forKey: .app)
        try c.encode(device, forKey: .device)
        try c.encode(model, forKey: .model)
        try c.encode(architecture, forKey: .architecture)
        try c.encode(artifact, forKey: .artifact)
        try c.encode(backend, forKey: .backend)
        try c.encode(delegate, forKey: .delegate)
        try c.encode(precision, forKey: .precision)
        try c.encode(resolution, forKey: .resolution)
        try c.encode(computeUnits, forKey: .computeUnits)
        try c.encodeNil(forKey: .threads)  // neither runtime's Swift API sets a thread count
        try c.encode(warmup, forKey: .warmup)
        try c.encode(iterations, forKey: .iterations)
        try c.encode(loadMsCold, forKey: .loadMsCold)
        try c.encode(loadMsWarm, forKey: .loadMsWarm)
        try c.encode(firstInferenceMs, forKey: .firstInferenceMs)
        try c.encode(samplesMs, forKey: .samplesMs)
        try c.encode(stats, forKey: .stats)
        try c.encode(top1, forKey: .top1)
        try c.encode(runtimeVersion, forKey: .runtimeVersion)
        try c.encode(timestamp, forKey: .timestamp)
    }

    func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }
}

struct DeviceInfo: Encodable {
    let model: String
    let osVersion: String
    let cpuCores: Int
    let memoryMb: Int
    let thermalState: String

    enum CodingKeys: String, CodingKey {
        case model = "model"
        case manufacturer = "manufacturer"
        case os = "os"
        case osVersion = "os_version"
        case soc = "soc"
        case abi = "abi"
        case cpuCores = "cpu_cores"
        case memoryMb = "memory_mb"
        case thermalState = "thermal_state"
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model)
        try c.encode("Apple", forKey: .manufacturer)
        try c.encode("iOS", forKey: .os)
        try c.encode(osVersion, forKey: .osVersion)
        try c.encodeNil(forKey: .soc)  // not exposed by iOS; the harness maps the model identifier
        try c.encode("arm64", forKey: .abi)
        try c.encode(cpuCores, forKey: .cpuCores)
        try c.encode(memoryMb, forKey: .memoryMb)
        try c.encode(thermalState, forKey: .thermalState)
    }

    /// Hardware identifier (e.g. iPhone15,4), OS version, cores, memory and the current thermal state.
    static func collect() -> DeviceInfo {
        var info = utsname()
        uname(&info)
        let machine = withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        let v = ProcessInfo.processInfo.operatingSystemVersion
        let thermal: String
        switch ProcessInfo.processInfo.thermalState {
        case .nominal: thermal = "nominal"
        case .fair: thermal = "fair"
        case .serious: thermal = "serious"
        case .critical: thermal = "critical"
        @unknown default: thermal = "unknown"
        }
        return DeviceInfo(model: machine, osVersion: "\(v.majorVersion).\(v.minorVersion).\(v.patchVersion)",
                          cpuCores: ProcessInfo.processInfo.activeProcessorCount,
                          memoryMb: Int(ProcessInfo.processInfo.physicalMemory / (1024 * 1024)),
                          thermalState: thermal)
    }
}

/// Summary statistics, defined as in the schema (and mobilevits.workflows.app_assets.compute_stats): median;
/// p90 by linear interpolation at rank 0.9 * (n - 1); trimmed mean of sorted[n/10 ..< 9n/10] (all
/// samples when that is empty), as ExecuTorch's minibench; cv = sample standard deviation / mean.
struct Stats: Encodable {
    let medianMs: Double
    let p90Ms: Double
    let trimmedMeanMs: Double
    let cv: Double

    enum CodingKeys: String, CodingKey {
        case medianMs = "median_ms"
        case p90Ms = "p90_ms"
        case trimmedMeanMs = "trimmed_mean_ms"
        case cv = "cv"
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(medianMs, forKey: .medianMs)
        try c.encode(p90Ms, forKey: .p90Ms)
        try c.encode(trimmedMeanMs, forKey: .trimmedMeanMs)
        try c.encode(cv, forKey: .cv)
    }

    static func of(_ samples: [Double]) -> Stats {
        precondition(!samples.isEmpty, "no samples")
        let xs = samples.sorted()
        let n = xs.count
        let median = n % 2 == 1 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2
        let pos = 0.9 * Double(n - 1)
        let lo = Int(pos.rounded(.down))
        let hi = min(lo + 1, n - 1)
        let p90 = xs[lo] + (xs[hi] - xs[lo]) * (pos - Double(lo))
        let a = n / 10, b = n * 9 / 10
        let kept = b > a ? Array(xs[a..<b]) : xs
        let mean = xs.reduce(0, +) / Double(n)
        let sd = n > 1 ? (xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n - 1)).squareRoot() : 0
        return Stats(medianMs: median, p90Ms: p90, trimmedMeanMs: kept.reduce(0, +) / Double(kept.count),
                     cv: mean > 0 ? sd / mean : 0)
    }
}

struct Top1: Encodable {
    let index: Int
    let label: String
    let expectedIndex: Int?

    var matches: Bool? { expectedIndex.map { $0 == index } }

    enum CodingKeys: String, CodingKey {
        case index = "index"
        case label = "label"
        case expectedIndex = "expected_index"
        case matches = "matches"
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(label, forKey: .label)
        try c.encode(expectedIndex, forKey: .expectedIndex)
        try c.encode(matches, forKey: .matches)
    }
}
