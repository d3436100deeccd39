// Peak probes: instruction throughput and read bandwidth, for the benchmarks' "% of limit".
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "edgecompress/cpu.h"
#include "edgecompress/driver.h"
#include "edgecompress/peak.h"

namespace py = pybind11;
using namespace edgecompress;


namespace {

// The first probe of that name this CPU runs (a name can have a VEX and an EVEX build).
const PeakProbe& probe_by_name(const std::string& name) {
  const PeakProbe* const* ps;
  const int n = peak_probes(&ps);
  bool known = false;
  for (int i = 0; i < n; ++i) {
    if (name != ps[i]->name) continue;
    known = true;
    if (cpu_has(ps[i]->needs)) return *ps[i];
  }
  throw std::invalid_argument(known ? "probe " + name + " cannot run on this CPU" : "unknown peak probe '" + name + "'");
}

}  // namespace

void register_peak(py::module_& m) {
  m.def("peak_probes", [] {
    const PeakProbe* const* ps;
    const int n = peak_probes(&ps);
    py::list out;
    for (int i = 0; i < n; ++i) {
      py::dict d;
      d["name"] = ps[i]->name;
      d["tier"] = isa_name(ps[i]->isa);
      d["runs_here"] = cpu_has(ps[i]->needs);
      out.append(d);
    }
    return out;
  }, "Peak probes built into this binary.");
  m.def("peak_ops", [](const std::string& name, double seconds) {
    const PeakProbe& p = probe_by_name(name);
    py::gil_scoped_release release;
    int64_t iters = 1024;
    double best = 0.0;
    for (auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
         std::chrono::steady_clock::now() < until;) {
      const auto t0 = std::chrono::steady_clock::now();
      p.run(iters);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (dt < 1e-3) {
        iters *= 2;
        continue;
      }
      best = std::max(best, static_cast<double>(iters) * p.instr_per_iter * p.ops_per_instr / dt);
    }
    return best;
  }, py::arg("name"), py::arg("seconds") = 0.2, "Best ops/s of a probe on this thread over `seconds`.");
  m.def("read_once", [](const std::string& name, const py::array& buf) {
    const PeakProbe& p = probe_by_name(name);
    if (!py::isinstance<py::array_t<uint8_t>>(buf) || buf.ndim() != 1 || !(buf.flags() & py::array::c_style))
      throw py::type_error("buf: expected a contiguous 1-D uint8 array");
    const auto addr = reinterpret_cast<uintptr_t>(buf.data());
    if (addr % 64 != 0 || buf.shape(0) % 256 != 0)
      throw std::invalid_argument("buf: expected 64-byte alignment and a multiple of 256 bytes");
    const void* data = buf.data();
    const size_t bytes = static_cast<size_t>(buf.shape(0));
    py::gil_scoped_release release;
    return p.read(data, bytes);
  }, py::arg("probe"), py::arg("buf"), "Reads `buf` once with the probe's loads (a candidate for timing loops).");
  m.def("read_bandwidth", [](const std::string& name, size_t bytes, double seconds) {
    const PeakProbe& p = probe_by_name(name);
    bytes = (bytes + 255) / 256 * 256;
    AlignedArray<uint8_t> buf(bytes);
    for (size_t i = 0; i < bytes; ++i) buf.data()[i] = static_cast<uint8_t>(i * 131);
    py::gil_scoped_release release;
    std::vector<double> times;
    for (auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
         std::chrono::steady_clock::now() < until || times.size() < 5;) {
      const auto t0 = std::chrono::steady_clock::now();
      volatile uint64_t sink = p.read(buf.data(), bytes);
      (void)sink;
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    return static_cast<double>(bytes) / times[times.size() / 2];
  }, py::arg("probe"), py::arg("bytes"), py::arg("seconds") = 0.2,
     "Median bytes/s of repeated reads of a `bytes` buffer (warm: it stays in the cache level it fits).");
}
