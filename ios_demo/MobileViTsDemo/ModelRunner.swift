import CoreML
import ExecuTorch
import Foundation

/// Core ML compute units, named as in the bench JSON (`compute_units`) and in test names.
enum ComputeUnits: String, CaseIterable, Identifiable {
    case cpuOnly = "cpu_only"
    case cpuAndGPU = "cpu_and_gpu"
    case cpuAndNE = "cpu_and_ne"
    case all = "all"

    var id: String { rawValue }

    var mlComputeUnits: MLComputeUnits {
        switch self {
        case .cpuOnly: return .cpuOnly
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuAndNE: return .cpuAndNeuralEngine
        case .all: return .all
        }
    }

    var title: String {
        switch self {
        case .cpuOnly: return "CPU only"
        case .cpuAndGPU: return "CPU + GPU"
        case .cpuAndNE: return "CPU + Neural Engine"
        case .all: return "All"
        }
    }
}

/// One loaded model; not thread-safe.
protocol ModelRunner: AnyObject {
    /// Logits for one float input laid out as the manifest says.
    func run(_ input: [Float]) throws -> [Float]
}

enum Runners {
    /// Load `entry` from `directory`. Core ML packages must be compiled first (`ModelFiles.compiledModel`).
    static func load(_ entry: ModelEntry, directory: URL, computeUnits: ComputeUnits?, compiledURL: URL?) throws -> ModelRunner {
        switch entry.backend {
        case "coreml":
            guard let compiledURL else { throw DemoError("\(entry.file) is not compiled yet") }
            return try CoreMLRunner(compiledURL: compiledURL, entry: entry, computeUnits: computeUnits ?? .all)
        case "executorch":
            return try ExecuTorchRunner(url: directory.appendingPathComponent(entry.file), entry: entry)
        default:
            throw DemoError("ios_demo cannot run \(entry.backend) models (\(entry.file))")
        }
    }
}

/// Core ML: MLModel(contentsOf: compiled .mlmodelc, configuration:) with the chosen compute units.
final class CoreMLRunner: ModelRunner {
    private let model: MLModel
    private let outputName: String
    private let array: MLMultiArray
    private let provider: MLDictionaryFeatureProvider

    init(compiledURL: URL, entry: ModelEntry, computeUnits: ComputeUnits) throws {
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits.mlComputeUnits
        model = try MLModel(contentsOf: compiledURL, configuration: config)
        outputName = entry.output.name
        array = try MLMultiArray(shape: entry.input.shape.map { NSNumber(value: $0) }, dataType: .float32)
        provider = try MLDictionaryFeatureProvider(dictionary: [entry.input.name: MLFeatureValue(multiArray: array)])
    }

    func run(_ input: [Float]) throws -> [Float] {
        array.withUnsafeMutableBufferPointer(ofType: Float.self) { buffer, _ in
            // freshly made MLMultiArrays are C-contiguous
            _ = buffer.update(fromContentsOf: input)
        }
        let result = try model.prediction(from: provider)
        guard let logits = result.featureValue(for: outputName)?.multiArrayValue else {
            throw DemoError("Core ML output \(outputName) missing")
        }
        return Self.floats(logits)
    }

    private static func floats(_ a: MLMultiArray) -> [Float] {
        let n = a.count
        let contiguous = a.strides.last?.intValue == 1 && a.shape.count <= 2
        if contiguous && a.dataType == .float32 {
            return a.withUnsafeBufferPointer(ofType: Float.self) { Array($0.prefix(n)) }
        }
        return (0..<n).map { a[$0].floatValue }  // any dtype / layout, by logical index
    }
}

/// ExecuTorch (Swift package `executorch` + `backend_xnnpack` / `backend_coreml`): Module(filePath:),
/// load("forward"), forward(Tensor<Float>).
final class ExecuTorchRunner: ModelRunner {
    private let module: Module
    private let count: Int
    private let storage: UnsafeMutablePointer<Float>
    private let tensor: Tensor<Float>

    init(url: URL, entry: ModelEntry) throws {
        module = Module(filePath: url.path)
        try module.load("forward")
        count = entry.input.shape.reduce(1, *)
        storage = .allocate(capacity: count)
        storage.initialize(repeating: 0, count: count)
        // no-copy tensor over our own buffer: refilled for every run, never reallocated
        tensor = Tensor<Float>(bytesNoCopy: UnsafeMutableRawPointer(storage), shape: entry.input.shape)
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    func run(_ input: [Float]) throws -> [Float] {
        precondition(input.count == count, "input has \(input.count) values, the model wants \(count)")
        input.withUnsafeBufferPointer { storage.update(from: $0.baseAddress!, count: count) }
        let output = try Tensor<Float>(module.forward(tensor))
        return output.scalars()
    }
}

/// Where models live and where compiled Core ML models are cached.
enum ModelFiles {
    /// Compile an .mlpackage once per content hash (MLModel.compileModel(at:)) and keep the .mlmodelc in
    /// Application Support, so later launches skip compilation (the first *load* may still specialise).
    static func compiledModel(for entry: ModelEntry, in directory: URL) async throws -> URL {
        let fm = FileManager.default
        let cache = try fm.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            .appendingPathComponent("CompiledModels", isDirectory: true)
        try fm.createDirectory(at: cache, withIntermediateDirectories: true)
        let target = cache.appendingPathComponent("\(entry.name)-\(entry.sha256Prefix).mlmodelc")
        if fm.fileExists(atPath: target.path) { return target }
        let compiled = try await MLModel.compileModel(at: directory.appendingPathComponent(entry.file))
        _ = try? fm.removeItem(at: target)
        try fm.moveItem(at: compiled, to: target)
        return target
    }

    /// Blocking variant for XCTest's synchronous test methods.
    static func compiledModelSync(for entry: ModelEntry, in directory: URL) throws -> URL {
        final class Box: @unchecked Sendable { var result: Result<URL, Error> = .failure(DemoError("not compiled")) }
        let box = Box()
        let semaphore = DispatchSemaphore(value: 0)
        Task.detached {
            do { box.result = .success(try await compiledModel(for: entry, in: directory)) } catch { box.result = .failure(error) }
            semaphore.signal()
        }
        semaphore.wait()
        return try box.result.get()
    }
}

extension ModelEntry {
    var sha256Prefix: String { String(sha256.prefix(12)) }
}

/// Indices of the k largest logits, best first, with softmax probabilities.
func topK(_ logits: [Float], _ k: Int) -> [(index: Int, probability: Float)] {
    guard let maxLogit = logits.max() else { return [] }
    let exps = logits.map { exp($0 - maxLogit) }
    let sum = exps.reduce(0, +)
    return logits.indices.sorted { logits[$0] > logits[$1] }.prefix(k).map { ($0, exps[$0] / sum) }
}
