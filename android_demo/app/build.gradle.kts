import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "org.mobilevits.demo"
    compileSdk = 36

    defaultConfig {
        applicationId = "org.mobilevits.demo"
        minSdk = 26
        targetSdk = 36
        versionCode = 1
        versionName = "0.1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
        // The ExecuTorch AAR ships arm64-v8a and x86_64 (emulator) only.
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
        buildConfigField("String", "EXECUTORCH_VERSION", "\"${libs.versions.executorch.get()}\"")
        buildConfigField("String", "LITERT_VERSION", "\"${libs.versions.litert.get()}\"")
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            // Add your signing config here (or sign in Android Studio: Build > Generate Signed App Bundle/APK).
        }
        // What the latency harness installs: release code (no debug JIT penalties on the Java side),
        // but debuggable so `adb shell run-as org.mobilevits.demo cat files/bench/<model>.json` works,
        // and signed with the debug key so it builds without any signing setup.
        create("benchmark") {
            initWith(getByName("release"))
            isDebuggable = true
            signingConfig = signingConfigs.getByName("debug")
            matchingFallbacks += listOf("release")
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    buildFeatures {
        buildConfig = true
    }
    androidResources {
        // models are copied out of the APK once; no point compressing them
        noCompress += listOf("pte", "tflite")
    }
    packaging {
        // fbjni (ExecuTorch) and LiteRT may both carry the C++ runtime
        jniLibs { pickFirsts += listOf("**/libc++_shared.so") }
    }
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

dependencies {
    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.activity.ktx)
    implementation(libs.executorch.android)  // pulls com.facebook.fbjni:fbjni and soloader through its POM
    implementation(libs.litert)
    testImplementation(libs.junit)
}
