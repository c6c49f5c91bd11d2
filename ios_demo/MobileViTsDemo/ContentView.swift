import PhotosUI
import SwiftUI
import UIKit

/// Pick an image (camera, photo library or the bundled test image), run the chosen model with the
/// chosen Core ML compute units, and show the top-5 classes and the latency.
struct ContentView: View {
    @StateObject private var classifier = Classifier()
    @State private var photo: PhotosPickerItem?
    @State private var showCamera = false

    var body: some View {
        NavigationStack {
            Form {
                if classifier.models.isEmpty {
                    Text(classifier.status)
                } else {
                    Section("Model") {
                        Picker("Model", selection: $classifier.selectedName) {
                            ForEach(classifier.models) { Text($0.name).tag($0.name) }
                        }
                        if classifier.selected?.isCoreML == true {
                            Picker("Compute units", selection: $classifier.computeUnits) {
                                ForEach(ComputeUnits.allCases) { Text($0.title).tag($0) }
                            }
                        }
                    }
                    Section("Image") {
                        HStack {
                            PhotosPicker("Photos", selection: $photo, matching: .images)
                            Spacer()
                            Button("Camera") { showCamera = true }
                                .disabled(!UIImagePickerController.isSourceTypeAvailable(.camera))
                            Spacer()
                            Button("Test image") { classifier.classifyTestImage() }
                        }
                        .buttonStyle(.borderless)
                        if let image = classifier.image {
                            Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 240)
                        }
                    }
                    Section("Result") {
                        Text(classifier.status).font(.system(.footnote, design: .monospaced)).textSelection(.enabled)
                    }
                }
            }
            .navigationTitle("MobileViTs")
        }
        .onChange(of: photo) { _, item in
            Task {
                if let data = try? await item?.loadTransferable(type: Data.self), let image = UIImage(data: data) {
                    classifier.classify(image)
                }
            }
        }
        .sheet(isPresented: $showCamera) {
            CameraPicker { image in classifier.classify(image) }.ignoresSafeArea()
        }
    }
}

@MainActor
final class Classifier: ObservableObject {
    @Published var models: [ModelEntry] = []
    @Published var selectedName = "" { didSet { status = "Pick an image." } }
    @Published var computeUnits: ComputeUnits = .all { didSet { status = "Pick an image." } }
    @Published var image: UIImage?
    @Published var status = ""

    private let directory = AppManifest.bundledDirectory
    private let engine = InferenceEngine()

    var selected: ModelEntry? { models.first { $0.name == selectedName } }

    init() {
        do {
            guard let directory else { throw DemoError("no Models/ folder in the bundle") }
            models = try AppManifest.load(from: directory).models.filter { ["coreml", "executorch"].contains($0.backend) }
            selectedName = models.first?.name ?? ""
            status = models.isEmpty ? "No models." : "Pick an image."
        } catch {
            status = "No models bundled (\(error.localizedDescription)). Run `mobilevits export-app-assets ARTIFACT --to ios_demo`, then rebuild."
        }
    }

    func classifyTestImage() {
        guard let entry = selected, let directory, let cg = try? Preprocessor.testImage(for: entry, in: directory) else { return }
        run(UIImage(cgImage: cg), cg, prepared: entry.testImage.prepared, isTestImage: true)
    }

    func classify(_ image: UIImage) {
        guard let cg = Preprocessor.upright(image) else { status = "cannot read the image"; return }
        run(image, cg, prepared: false, isTestImage: false)
    }

    private func run(_ shown: UIImage, _ cg: CGImage, prepared: Bool, isTestImage: Bool) {
        guard let entry = selected, let directory else { return }
        let units = entry.isCoreML ? computeUnits : nil
        image = shown
        status = "running \(entry.name)…"
        Task {
            do {
                var compiled: URL?
                if entry.isCoreML { compiled = try await ModelFiles.compiledModel(for: entry, in: directory) }
                status = try await engine.classify(entry, units: units, compiled: compiled, directory: directory,
                                                   image: cg, prepared: prepared, isTestImage: isTestImage)
            } catch {
                status = "error: \(error.localizedDescription)"
            }
        }
    }
}

/// Owns the loaded model and runs it on one serial queue (runners are not thread-safe).
final class InferenceEngine: @unchecked Sendable {
    private let queue = DispatchQueue(label: "mobilevits.inference", qos: .userInitiated)
    private var runner: ModelRunner?
    private var key = ""

    func classify(_ entry: ModelEntry, units: ComputeUnits?, compiled: URL?, directory: URL, image: CGImage,
                  prepared: Bool, isTestImage: Bool) async throws -> String {
        try await withCheckedThrowingContinuation { done in
            queue.async {
                done.resume(with: Result {
                    try self.classifyNow(entry, units, compiled, directory, image, prepared, isTestImage)
                })
            }
        }
    }

    private func classifyNow(_ entry: ModelEntry, _ units: ComputeUnits?, _ compiled: URL?, _ directory: URL,
                             _ image: CGImage, _ prepared: Bool, _ isTestImage: Bool) throws -> String {
        var lines = ["\(entry.backend) / \(entry.delegate) / \(entry.precision), \(entry.resolution)px"
                     + (units.map { ", \($0.title)" } ?? "")]
        let wanted = "\(entry.name)|\(units?.rawValue ?? "-")"
        if key != wanted || runner == nil {
            runner = nil
            let t0 = DispatchTime.now()
            runner = try Runners.load(entry, directory: directory, computeUnits: units, compiledURL: compiled)
            key = wanted
            lines.append(String(format: "load: %.1f ms", BenchSession.ms(since: t0)))
        }
        let input = try Preprocessor.input(from: image, entry: entry, prepared: prepared)
        let t0 = DispatchTime.now()
        let logits = try runner!.run(input)
        lines.append(String(format: "inference: %.2f ms (single run; the XCTest target gives statistics)",
                            BenchSession.ms(since: t0)))
        for (rank, item) in topK(logits, 5).enumerated() {
            lines.append(String(format: "%d. %@ %5.1f%%", rank + 1, entry.label(item.index), 100 * item.probability))
        }
        if isTestImage, let best = topK(logits, 1).first?.index {
            let verdict = best == entry.expected.top1Index ? "OK" : "MISMATCH"
            lines.append("expected top-1 on the test image: \(entry.expected.top1Label) -> \(verdict)"
                         + String(format: " (host margin %.3g)", entry.expected.margin))
        }
        return lines.joined(separator: "\n")
    }
}

/// UIImagePickerController for the camera (PhotosPicker covers the library).
struct CameraPicker: UIViewControllerRepresentable {
    let onImage: (UIImage) -> Void
    @Environment(\.dismiss) private var dismiss

    func makeUIViewController(context: Context) -> UIImagePickerController {
        let picker = UIImagePickerController()
        picker.sourceType = .camera
        picker.delegate = context.coordinator
        return picker
    }

    func updateUIViewController(_ controller: UIImagePickerController, context: Context) {}

    func makeCoordinator() -> Coordinator { Coordinator(self) }

    final class Coordinator: NSObject, UIImagePickerControllerDelegate, UINavigationControllerDelegate {
        let parent: CameraPicker
        init(_ parent: CameraPicker) { self.parent = parent }

        func imagePickerController(_ picker: UIImagePickerController,
                                   didFinishPickingMediaWithInfo info: [UIImagePickerController.InfoKey: Any]) {
            if let image = info[.originalImage] as? UIImage { parent.onImage(image) }
            parent.dismiss()
        }

        func imagePickerControllerDidCancel(_ picker: UIImagePickerController) { parent.dismiss() }
    }
}
