// The heap of a long-running node process favours size over speed, set before anything else
// allocates: imported first by cli.ts.
//
// Every Subscribe or Multiplex stream leaves tens of KiB of JS garbage and native HTTP/2 memory
// that only a garbage collection releases. With V8's defaults the heap grows to hold it and the
// process kept hundreds of MiB after thousands of streams had closed (issue 15), since nothing
// collects an idle process. With --optimize-for-size the heap grows in smaller steps and V8's
// memory reducer collects and shrinks it within seconds of the load ending
// (tests/conformance/test_stream_memory.py). It has a price: under load, hops to a Node node cost
// 100-250 us more at the median (docs/performance.md, per-hop latency between languages).
import { setFlagsFromString } from "node:v8";

setFlagsFromString("--optimize-for-size");
