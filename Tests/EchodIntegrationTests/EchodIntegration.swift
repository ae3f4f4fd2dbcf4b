// SPDX-License-Identifier: Apache-2.0
// All integration suites hang under one serialized parent: they start processes, send
// signals and load a 2-core machine, and timing-sensitive checks (backpressure stalls,
// stop timeouts) must not compete with each other. `.serialized` applies to the nested
// suites too.
import Testing

@Suite(.serialized, .timeLimit(.minutes(1)))
enum EchodIntegration {}

/// The concurrency models every behavioural suite runs against.
let servingModels = ["event", "thread", "fork"]
