// SPDX-License-Identifier: Apache-2.0
// zlib, for the compressed HdrHistogram encoding of echoload's latency logs.
#include <zlib.h>
