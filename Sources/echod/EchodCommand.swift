// Filled in by the daemon wiring.
@main struct EchodMain { static func main() {} }
