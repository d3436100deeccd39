// CPU detection, tiers, kernel registry and thread pool.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "edgecompress/cpu.h"
#include "edgecompress/gemm_s8.h"
#include "edgecompress/threadpool.h"

namespace py = pybind11;
using namespace edgecompress;

namespace {

Isa tier_from_name(const std::string& name) {
  Isa isa;
  if (!isa_from_name(name.c_str(), &isa)) throw std::invalid_argument("unknown tier '" + name + "'");
  return isa;
}

py::list features_list() {
  const CpuFeatures& f = cpu_features();
  py::list out;
  auto add = [&](bool on, const char* name) {
    if (on) out.append(name);
  };
  add(f.avx2, "avx2"), add(f.fma, "fma"), add(f.f16c, "f16c"), add(f.bmi2, "bmi2"), add(f.avxvnni, "avxvnni");
  add(f.avx512f, "avx512f"), add(f.avx512bw, "avx512bw"), add(f.avx512dq, "avx512dq"), add(f.avx512vl, "avx512vl");
  add(f.avx512vnni, "avx512vnni"), add(f.amx_tile, "amx_tile"), add(f.amx_int8, "amx_int8");
  add(f.neon, "neon"), add(f.dotprod, "dotprod"), add(f.i8mm, "i8mm"), add(f.sve, "sve");
  return out;
}

}  // namespace

void register_runtime(py::module_& m) {
  m.def("arch", [] { return std::string(cpu_features().arch); });
  m.def("cpu_model", [] { return cpu_features().model; });
  m.def("cpu_features", &features_list, "Features detected on this CPU (with OS support for their state).");
  m.def("ladder", [] {
    const Isa* tiers;
    const int n = isa_ladder(&tiers);
    py::list out;
    for (int i = 0; i < n; ++i) out.append(isa_name(tiers[i]));
    return out;
  }, "This architecture's tiers, lowest first.");
  m.def("tier_support", [](const std::string& name) {
    std::string why;
    const bool ok = isa_supported(tier_from_name(name), &why);
    return py::make_tuple(ok, ok ? py::none() : py::object(py::str(why)));
  }, "(supported, reason) for a tier on this CPU.");
  m.def("gemm_s8_kernels", [] {
    const GemmS8Kernel* const* ks;
    const int n = gemm_s8_kernels(&ks);
    py::list out;
    for (int i = 0; i < n; ++i) {
      py::dict d;
      d["name"] = ks[i]->name;
      d["tier"] = isa_name(ks[i]->isa);
      d["mr"] = ks[i]->mr, d["nr"] = ks[i]->nr, d["kr"] = ks[i]->kr;
      d["runs_here"] = ks[i]->supported(cpu_features());
      out.append(d);
    }
    return out;
  }, "Every gemm_s8 kernel built into this binary, lowest tier first.");
  m.def("gemm_s8_select", [](const std::string& cap) {
    return std::string(gemm_s8_select(tier_from_name(cap))->name);
  }, "Name of the gemm_s8 kernel the registry picks under a tier cap.");
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("n must be >= 1");
    set_num_threads(n);
  });
  m.def("default_num_threads", &default_num_threads);
}

#include <chrono>
#include <vector>

#include "edgecompress/driver.h"
#include "edgecompress/peak.h"

namespace {

const PeakProbe& probe_by_name(const std::string& name) {
  const PeakProbe* const* ps;
  const int n = peak_probes(&ps);
  for (int i = 0; i < n; ++i) {
    if (name == ps[i]->name) {
      if (!ps[i]->supported(cpu_features())) throw std::invalid_argument("probe " + name + " cannot run on this CPU");
      return *ps[i];
    }
  }
  throw std::invalid_argument("unknown peak probe '" + name + "'");
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
      d["runs_here"] = ps[i]->supported(cpu_features());
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
