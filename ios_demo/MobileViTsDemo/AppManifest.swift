import Foundation

/// manifest.json written by `mobilevits export-app-assets` (schema: mobilevits/workflows/schemas/app_manifest.schema.json).
/// Only the fields the app needs are decoded; tests/test_app_assets.py checks every key below exists in the schema.
struct AppManifest: Decodable {
    static let supportedSchemaVersion = 1

    let schemaVersion: Int
    let app: String
    let models: [ModelEntry]

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case app = "app"
        case models = "models"
    }

    /// The bundled Models/ folder (a folder reference in project.yml).
    static var bundledDirectory: URL? { Bundle.main.url(forResource: "Models", withExtension: nil) }

    static func load(from directory: URL) throws -> AppManifest {
        let data = try Data(contentsOf: directory.appendingPathComponent("manifest.json"))
        let manifest = try JSONDecoder().decode(AppManifest.self, from: data)
        guard manifest.schemaVersion == supportedSchemaVersion else {
            throw DemoError("manifest schema_version \(manifest.schemaVersion); this app reads \(supportedSchemaVersion)")
        }
        return manifest
    }
}

struct ModelEntry: Decodable, Identifiable, Hashable {
    let name: String
    let architecture: String
    let file: String
    let backend: String
    let delegate: String
    let precision: String
    let sha256: String
    let input: InputSpec
    let output: OutputSpec
    let preprocess: PreprocessSpec
    let labels: [String]
    let testImage: TestImage
    let expected: Expected

    var id: String { name }
    var resolution: Int { preprocess.resolution }
    var isCoreML: Bool { backend == "coreml" }

    enum CodingKeys: String, CodingKey {
        case name = "name"
        case architecture = "architecture"
        case file = "file"
        case backend = "backend"
        case delegate = "delegate"
        case precision = "precision"
        case sha256 = "sha256"
        case input = "input"
        case output = "output"
        case preprocess = "preprocess"
        case labels = "labels"
        case testImage = "test_image"
        case expected = "expected"
    }

    func label(_ index: Int) -> String { index < labels.count ? labels[index] : "class \(index)" }

    static func == (a: ModelEntry, b: ModelEntry) -> Bool { a.name == b.name }
    func hash(into hasher: inout Hasher) { hasher.combine(name) }
}

struct InputSpec: Decodable {
    let name: String
    let shape: [Int]
    let layout: String

    enum CodingKeys: String, CodingKey {
        case name = "name"
        case shape = "shape"
        case layout = "layout"
    }
}

struct OutputSpec: Decodable {
    let name: String
    let numClasses: Int

    enum CodingKeys: String, CodingKey {
        case name = "name"
        case numClasses = "num_classes"
    }
}

/// Resize the short side to resizeShortSide, centre-crop resolution², x = (pixel * scale - mean) / std.
struct PreprocessSpec: Decodable {
    let resolution: Int
    let resizeShortSide: Int
    let scale: Float
    let mean: [Float]
    let std: [Float]
    let normalizationInModel: Bool

    enum CodingKeys: String, CodingKey {
        case resolution = "resolution"
        case resizeShortSide = "resize_short_side"
        case scale = "scale"
        case mean = "mean"
        case std = "std"
        case normalizationInModel = "normalization_in_model"
    }
}

struct TestImage: Decodable {
    let file: String
    let prepared: Bool

    enum CodingKeys: String, CodingKey {
        case file = "file"
        case prepared = "prepared"
    }
}

struct Expected: Decodable {
    let top1Index: Int
    let top1Label: String
    let top5: [Int]
    let margin: Double
    let reference: String

    enum CodingKeys: String, CodingKey {
        case top1Index = "top1_index"
        case top1Label = "top1_label"
        case top5 = "top5"
        case margin = "margin"
        case reference = "reference"
    }
}

struct DemoError: LocalizedError {
    let message: String
    init(_ message: String) { self.message = message }
    var errorDescription: String? { message }
}
