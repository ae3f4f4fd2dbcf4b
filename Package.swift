// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "echod",
    products: [
        .executable(name: "echod", targets: ["echod"]),
        .library(name: "EchoCore", targets: ["EchoCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // The only C in the product: forwarders for what Glibc does not import
        // (epoll, eventfd, signalfd, timerfd, accept4, prlimit, pipe2, dup3).
        .target(
            name: "CEchoShims",
            cSettings: [.define("_GNU_SOURCE")]
        ),
        // libsystemd, imported only by EchoSystemd.
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        .target(
            name: "EchoCore",
            dependencies: [
                "CEchoShims",
                .product(name: "Logging", package: "swift-log"),
            ]
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
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "EchoCoreTests",
            dependencies: ["EchoCore", "CEchoShims"]
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
