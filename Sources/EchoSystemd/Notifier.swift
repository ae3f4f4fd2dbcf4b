import EchoCore
