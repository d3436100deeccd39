// CPU detection, tiers, kernel registry and thread pool.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "edgecompress/cpu.h"
#include "edgecompress/registry.h"
#include "edgecompress/threadpool.h"
#include "common.h"

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
  add(f.avx512vnni, "avx512vnni"), add(f.avx512vbmi, "avx512vbmi"), add(f.amx_tile, "amx_tile"), add(f.amx_int8, "amx_int8");
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
  m.def("amx_unusable", [] {
    const std::string& why = cpu_features().amx_unusable;
    return why.empty() ? py::none() : py::object(py::str(why));
  }, "Why AMX cannot be used here (CPU, OS tile state, or the tile data permission), or None.");
  m.def("tier_support", [](const std::string& name) {
    std::string why;
    const bool ok = isa_supported(tier_from_name(name), &why);
    return py::make_tuple(ok, ok ? py::none() : py::object(py::str(why)));
  }, "(supported, reason) for a tier on this CPU.");
  // Every family of the registry (registry.h): its two functions, and the list of their names.
  std::vector<std::string> families;
#define EC_DEF_FAMILY(family, Kernel)                                  \
  bindings::def_family(m, #family, family##_kernels, family##_select); \
  families.push_back(#family);
  EC_KERNEL_FAMILIES(EC_DEF_FAMILY)
#undef EC_DEF_FAMILY
  m.def("families", [families] { return families; }, "Every kernel family of the registry, in its order.");
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("n must be >= 1");
    set_num_threads(n);
  });
  m.def("default_num_threads", &default_num_threads);
}

