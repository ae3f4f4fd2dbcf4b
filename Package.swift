// swift-tools-version:6.1
// SPDX-License-Identifier: Apache-2.0

import PackageDescription

let package = Package(
    name: "echod",
    products: [
        .executable(name: "echod", targets: ["echod"]),
        .executable(name: "echoload", targets: ["echoload"]),
        .library(name: "EchoCore", targets: ["EchoCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // The only C in the product: what Glibc does not import or Swift cannot do (accept4,
        // prlimit, pipe2, close_range, the epoll/eventfd/signalfd/timerfd headers and constants,
        // raw recv/send/epoll_wait, the fork child's and thread model's signal handlers, atomics
        // on shared memory). See Sources/CEchoShims/include/CEchoShims.h.
        .target(
            name: "CEchoShims",
            cSettings: [.define("_GNU_SOURCE")]
        ),
        // libsystemd, imported only by EchoSystemd.
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        .target(
            name: "EchoCore",
            dependencies: [
                "CEchoShims",
                "EchoBuildInfo",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Version and build (git commit, Swift version) for --version, generated before every build.
        .target(
            name: "EchoBuildInfo",
            plugins: ["BuildInfoPlugin"]
        ),
        .plugin(
            name: "BuildInfoPlugin",
            capability: .buildTool()
        ),
        .target(
            name: "EchoSystemd",
            dependencies: ["CSystemd", "EchoCore"]
        ),
        .executableTarget(
            name: "echod",
            dependencies: [
                "EchoCore",
                "EchoSystemd",
                "EchoBuildInfo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The load engine: links EchoCore for sockets, never the server models.
        .target(
            name: "EchoLoad",
            dependencies: [
                "EchoCore",
                "CEchoShims",
                "CZlib",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .executableTarget(
            name: "echoload",
            dependencies: [
                "EchoLoad",
                "EchoCore",
                "EchoBuildInfo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "EchoCoreTests",
            dependencies: ["EchoCore", "CEchoShims", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "EchoLoadTests",
            dependencies: ["EchoLoad", "EchoCore", "CEchoShims"]
        ),
        .testTarget(
            name: "EchoSystemdTests",
            dependencies: ["EchoSystemd", "EchoCore"]
        ),
        .testTarget(
            name: "EchodIntegrationTests",
            dependencies: ["EchoCore", "CEchoShims"]
        ),
    ]
)
