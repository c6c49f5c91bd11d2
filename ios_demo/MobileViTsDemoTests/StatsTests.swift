import XCTest
@testable import MobileViTsDemo

/// Stats must match mobilevits.workflows.app_assets.compute_stats; tests/test_app_assets.py recomputes these
/// GOLDEN values in Python from the same samples (and compares them with the Android StatsTest).
final class StatsTests: XCTestCase {
    static let goldenMedian = 6.0
    static let goldenP90 = 10.0
    static let goldenTrimmedMean = 5.5
    static let goldenCv = 0.5708833283255307

    func testMatchesTheHostDefinition() {
        let s = Stats.of([5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0, 9.0, 8.0, 12.0])
        XCTAssertEqual(s.medianMs, Self.goldenMedian, accuracy: 1e-9)
        XCTAssertEqual(s.p90Ms, Self.goldenP90, accuracy: 1e-9)
        XCTAssertEqual(s.trimmedMeanMs, Self.goldenTrimmedMean, accuracy: 1e-9)
        XCTAssertEqual(s.cv, Self.goldenCv, accuracy: 1e-9)
    }

    func testOneSample() {
        let s = Stats.of([2.5])
        XCTAssertEqual(s.medianMs, 2.5)
        XCTAssertEqual(s.p90Ms, 2.5)
        XCTAssertEqual(s.trimmedMeanMs, 2.5)
        XCTAssertEqual(s.cv, 0)
    }

    func testBenchJSONHasEveryKeyEvenWhenNil() throws {
        let result = BenchResult(
            device: DeviceInfo.collect(), model: "m", architecture: "a", artifact: "m.pte", backend: "executorch",
            delegate: "xnnpack", precision: "fp32", resolution: 96, computeUnits: nil, warmup: 1, iterations: 1,
            loadMsCold: 1, loadMsWarm: nil, firstInferenceMs: 1, samplesMs: [1], stats: Stats.of([1]),
            top1: Top1(index: 0, label: "class 0", expectedIndex: nil), runtimeVersion: "x", timestamp: "2026-01-01T00:00:00Z")
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: result.jsonData()) as? [String: Any])
        for key in ["compute_units", "threads", "load_ms_warm"] {
            XCTAssertTrue(object[key] is NSNull, "\(key) must be written as null")
        }
        let top1 = try XCTUnwrap(object["top1"] as? [String: Any])
        XCTAssertTrue(top1["expected_index"] is NSNull)
        XCTAssertTrue(top1["matches"] is NSNull)
    }
}
