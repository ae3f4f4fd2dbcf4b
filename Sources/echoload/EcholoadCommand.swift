@main struct EcholoadMain { static func main() {} }
