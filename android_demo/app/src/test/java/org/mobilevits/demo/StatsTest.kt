package org.mobilevits.demo

import org.junit.Assert.assertEquals
import org.junit.Test

/**
 * Stats must match mobilevits.workflows.app_assets.compute_stats; tests/test_app_assets.py recomputes these
 * GOLDEN values in Python from the same samples, so a change on either side fails one of the two tests.
 * Run with `./gradlew :app:testDebugUnitTest`.
 */
class StatsTest {
    @Test
    fun matchesTheHostDefinition() {
        val samples = doubleArrayOf(5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0, 9.0, 8.0, 12.0)
        val s = Stats.of(samples)
        assertEquals(GOLDEN_MEDIAN, s.medianMs, 1e-9)
        assertEquals(GOLDEN_P90, s.p90Ms, 1e-9)
        assertEquals(GOLDEN_TRIMMED_MEAN, s.trimmedMeanMs, 1e-9)
        assertEquals(GOLDEN_CV, s.cv, 1e-9)
    }

    @Test
    fun oneSample() {
        val s = Stats.of(doubleArrayOf(2.5))
        assertEquals(2.5, s.medianMs, 0.0)
        assertEquals(2.5, s.p90Ms, 0.0)
        assertEquals(2.5, s.trimmedMeanMs, 0.0)
        assertEquals(0.0, s.cv, 0.0)
    }

    companion object {
        const val GOLDEN_MEDIAN = 6.0
        const val GOLDEN_P90 = 10.0
        const val GOLDEN_TRIMMED_MEAN = 5.5
        const val GOLDEN_CV = 0.5708833283255307
    }
}
