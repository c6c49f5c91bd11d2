import SwiftUI

@main
struct MobileViTsDemoApp: App {
    init() {
        // Bench mode (devicectl route): run, write Documents/bench/*.json, exit. See BenchMode.
        // Not when hosting the XCTest bundle, which times the models itself.
        let hostingTests = ProcessInfo.processInfo.environment["XCTestConfigurationFilePath"] != nil
        if !hostingTests, let options = BenchMode.options(from: CommandLine.arguments) {
            Task.detached(priority: .userInitiated) {
                let code = await BenchMode.run(options)
                exit(code)
            }
        }
    }

    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
