import ObjectiveC
import XCTest
@testable import MobileViTsDemo

/// One performance test per bundled model and Core ML compute unit, generated at run time from
/// Models/manifest.json, as ExecuTorch's Benchmark app does with its ResourceTestCase/DynamicTestCase:
///
///   test_<model>_<compute_units>   (.mlpackage: cpu_only, cpu_and_gpu, cpu_and_ne, all)
///   test_<model>                   (.pte)
///
/// Each test does the BenchSession sequence (cold load, first inference, warm load, warm-up) and then
/// times `forward` with measure(metrics: [XCTClockMetric()], options:) — XCTest runs the block
/// iterationCount + 1 times and discards the first run. Per-iteration values land in the result bundle:
///   xcrun xcresulttool get test-results metrics --path R.xcresult --compact
/// and the full bench JSON (schemas/bench_result.schema.json) is attached to each test as
/// bench_<model>[_<compute_units>].json.
///
/// Knobs (environment; through xcodebuild prefix them with TEST_RUNNER_, e.g. TEST_RUNNER_MOBILEVITS_ITERATIONS=50):
///   MOBILEVITS_ITERATIONS (default 20), MOBILEVITS_WARMUP (default 5),
///   MOBILEVITS_COMPUTE_UNITS (comma list, default all four), MOBILEVITS_MODELS (comma list of names, default all).
final class LatencyTests: XCTestCase {

    struct Case {
        let testName: String
        let entry: ModelEntry
        let computeUnits: ComputeUnits?
    }

    private static let env = ProcessInfo.processInfo.environment
    static var iterations: Int { Int(env["MOBILEVITS_ITERATIONS"] ?? "") ?? 20 }
    static var warmup: Int { Int(env["MOBILEVITS_WARMUP"] ?? "") ?? 5 }

    static func cases() -> [Case] {
        guard let directory = AppManifest.bundledDirectory,
              let manifest = try? AppManifest.load(from: directory) else { return [] }
        let units = (env["MOBILEVITS_COMPUTE_UNITS"]).map {
            $0.split(separator: ",").compactMap { ComputeUnits(rawValue: String($0)) }
        } ?? ComputeUnits.allCases
        let only = env["MOBILEVITS_MODELS"].map { Set($0.split(separator: ",").map(String.init)) }
        var out: [Case] = []
        for entry in manifest.models where only?.contains(entry.name) ?? true {
            if entry.isCoreML {
                out += units.map { Case(testName: testName(entry.name, $0), entry: entry, computeUnits: $0) }
            } else if entry.backend == "executorch" {
                out.append(Case(testName: testName(entry.name, nil), entry: entry, computeUnits: nil))
            }
        }
        return out
    }

    static func testName(_ model: String, _ units: ComputeUnits?) -> String {
        let raw = "test_" + model + (units.map { "_" + $0.rawValue } ?? "")
        return String(raw.map { $0.isLetter || $0.isNumber || $0 == "_" ? $0 : "_" })
    }

    override class var defaultTestSuite: XCTestSuite {
        let suite = XCTestSuite(forTestCaseClass: LatencyTests.self)  // the static tests below
        for c in cases() {
            let selector = NSSelectorFromString(c.testName)
            let block: @convention(block) (AnyObject) -> Void = { test in (test as! LatencyTests).measureLatency(c) }
            class_addMethod(LatencyTests.self, selector, imp_implementationWithBlock(block), "v@:")
            suite.addTest(LatencyTests(selector: selector))
        }
        return suite
    }

    /// Fails loudly when the app was built without models, instead of running zero latency tests.
    func testManifestHasModels() throws {
        let directory = try XCTUnwrap(AppManifest.bundledDirectory, "no Models/ folder in the app bundle")
        let manifest = try AppManifest.load(from: directory)
        XCTAssertFalse(manifest.models.isEmpty, "run `mobilevits export-app-assets ARTIFACT --to ios_demo` first")
    }

    func measureLatency(_ c: Case) {
        do {
            let directory = try XCTUnwrap(AppManifest.bundledDirectory)
            var compiled: URL?
            if c.entry.isCoreML { compiled = try ModelFiles.compiledModelSync(for: c.entry, in: directory) }
            let session = try BenchSession(entry: c.entry, directory: directory, computeUnits: c.computeUnits,
                                           compiledURL: compiled)
            try session.warmUp(Self.warmup)

            let options = XCTMeasureOptions()
            options.iterationCount = Self.iterations
            var samples: [Double] = []
            var logits: [Float] = []
            var failure: Error?
            measure(metrics: [XCTClockMetric()], options: options) {
                let t0 = DispatchTime.now()
                do { logits = try session.runner.run(session.input) } catch { failure = error }
                samples.append(BenchSession.ms(since: t0))
            }
            if let failure { throw failure }
            samples.removeFirst(max(0, samples.count - Self.iterations))  // XCTest's discarded first run

            let result = session.result(warmup: Self.warmup + 1, samples: samples, logits: logits)
            let attachment = XCTAttachment(data: try result.jsonData(), uniformTypeIdentifier: "public.json")
            attachment.name = "bench_\(c.testName.dropFirst("test_".count)).json"
            attachment.lifetime = .keepAlways
            add(attachment)

            // Correctness on the bundled image, where the host's answer is not a near-tie and the
            // arithmetic is the host's (fp32 on CPU): fp16 / Neural Engine runs may legitimately flip.
            let strict = c.entry.precision == "fp32" && (c.computeUnits == nil || c.computeUnits == .cpuOnly)
            if strict && c.entry.expected.margin > 1e-3 {
                XCTAssertEqual(result.top1.index, c.entry.expected.top1Index,
                               "top-1 on the test image differs from the host (\(c.entry.expected.reference))")
            }
        } catch {
            XCTFail("\(c.testName): \(error.localizedDescription)")
        }
    }
}
