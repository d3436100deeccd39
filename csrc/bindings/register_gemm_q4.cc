// 4-bit GEMM: weight packing and the fp32 linear. The Python layer (edgecompress.ops) validates user
// input first; these checks only guard the boundary.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"
#include "common.h"

namespace py = pybind11;
using namespace edgecompress;
using bindings::contiguous;
using bindings::require;

namespace {

std::unique_ptr<PackedQ4Weight> pack(const py::array& qweight, const py::array& scale, const py::object& zp,
                                     const py::object& codebook, int k, const std::string& kernel) {
  require(py::isinstance<py::array_t<uint8_t>>(qweight) && qweight.ndim() == 3 && contiguous(qweight),
          "qweight: expected uint8 (N, G, g/2) C-contiguous");
  const int n = static_cast<int>(qweight.shape(0)), groups = static_cast<int>(qweight.shape(1));
  const int g = static_cast<int>(qweight.shape(2)) * 2;
  require(n > 0 && groups > 0 && (g == 32 || g == 64 || g == 128), "qweight: bad shape");
  require(k > (groups - 1) * g && k <= groups * g, "k: does not match qweight");
  require(py::isinstance<py::array_t<uint16_t>>(scale) || scale.dtype().kind() == 'f', "scale: wrong dtype");
  require(scale.itemsize() == 2 && scale.ndim() == 2 && scale.shape(0) == n && scale.shape(1) == groups && contiguous(scale),
          "scale: expected float16 (N, G) C-contiguous");
  const uint8_t* zp_ptr = nullptr;
  if (!zp.is_none()) {
    const auto z = py::reinterpret_borrow<py::array>(zp);
    require(py::isinstance<py::array_t<uint8_t>>(zp) && z.ndim() == 2 && z.shape(0) == n && z.shape(1) == groups && contiguous(z),
            "zero_point: expected uint8 (N, G) C-contiguous");
    zp_ptr = static_cast<const uint8_t*>(z.data());
    for (py::ssize_t i = 0; i < z.size(); ++i) require(zp_ptr[i] < 16, "zero_point: expected values 0..15");
  }
  const float* cb_ptr = nullptr;
  bool per_channel = false;
  if (!codebook.is_none()) {
    require(zp.is_none(), "codebook: a codebook weight has no zero points");
    const auto c = py::reinterpret_borrow<py::array>(codebook);
    require(py::isinstance<py::array_t<float>>(codebook) && contiguous(c) &&
                ((c.ndim() == 1 && c.shape(0) == 16) || (c.ndim() == 2 && c.shape(0) == n && c.shape(1) == 16)),
            "codebook: expected float32 (16,) or (N, 16)");
    cb_ptr = static_cast<const float*>(c.data());
    per_channel = c.ndim() == 2;
  }
  const GemmQ4Kernel& kern = bindings::kernel_by_name(gemm_q4_kernels, kernel);
  const uint8_t* q = static_cast<const uint8_t*>(qweight.data());
  const uint16_t* s = static_cast<const uint16_t*>(scale.data());
  py::gil_scoped_release release;
  return pack_q4_weight(kern, q, n, k, g, s, zp_ptr, cb_ptr, per_channel);
}

py::array linear(const PackedQ4Weight& w, const py::array& x, const py::object& bias, int act, int compute,
                 const py::object& out) {
  bindings::LinearArrays a = bindings::linear_arrays(x, w.w.k, w.w.n, bias, act, out);
  require(compute == 0 || compute == 1, "compute: out of range");
  float* yp = static_cast<float*>(a.y.mutable_data());
  GemmStatus status;
  {
    py::gil_scoped_release release;
    status = gemm_q4(w, a.x, w.w.k, a.m, static_cast<Q4Compute>(compute), a.bias, static_cast<Activation>(act), yp,
                     get_num_threads());
  }
  bindings::raise_for(status);
  return a.y;
}

py::array best_candidates(const py::array& w, const py::array& scale, const py::array& lo, const py::array& hi) {
  require(py::isinstance<py::array_t<float>>(w) && w.ndim() == 2 && contiguous(w) && w.shape(1) > 0 &&
              w.shape(1) % 8 == 0,
          "w: expected float32 (groups, g) C-contiguous with g a multiple of 8");
  const py::ssize_t groups = w.shape(0);
  for (const py::array* a : {&scale, &lo, &hi}) {
    require(py::isinstance<py::array_t<float>>(*a) && a->ndim() == 2 && contiguous(*a) && a->shape(0) == groups &&
                a->shape(1) == scale.shape(1) && a->shape(1) > 0 && a->shape(1) <= INT32_MAX,
            "scale, lo, hi: expected float32 (groups, r) C-contiguous, r >= 1");
  }
  py::array_t<int32_t> best(groups);
  const float* wp = static_cast<const float*>(w.data());
  const float* sp = static_cast<const float*>(scale.data());
  const float* lp = static_cast<const float*>(lo.data());
  const float* hp = static_cast<const float*>(hi.data());
  int32_t* bp = best.mutable_data();
  const int g = static_cast<int>(w.shape(1)), r = static_cast<int>(scale.shape(1));
  py::gil_scoped_release release;
  int4_best_candidates(wp, groups, g, r, sp, lp, hp, bp, get_num_threads());
  return best;
}

}  // namespace

void register_gemm_q4(py::module_& m) {
  py::class_<PackedQ4Weight>(m, "PackedQ4Weight", "A 4-bit weight packed for the gemm_q4 kernels (opaque).")
      .def_property_readonly("kernel", [](const PackedQ4Weight& w) { return std::string(w.kernel->name); })
      .def_property_readonly("tier", [](const PackedQ4Weight& w) { return std::string(isa_name(w.kernel->isa)); })
      .def_property_readonly("n", [](const PackedQ4Weight& w) { return w.w.n; })
      .def_property_readonly("k", [](const PackedQ4Weight& w) { return w.w.k; })
      .def_property_readonly("nbytes", &PackedQ4Weight::nbytes);
  m.def("pack_q4", &pack, py::arg("qweight"), py::arg("scale"), py::arg("zero_point"), py::arg("codebook"),
        py::arg("k"), py::arg("kernel"));
  m.def("linear_q4", &linear, py::arg("w"), py::arg("x"), py::arg("bias"), py::arg("activation"), py::arg("compute"),
        py::arg("out") = py::none());
  m.def("int4_best_candidates", &best_candidates, py::arg("w"), py::arg("scale"), py::arg("lo"), py::arg("hi"),
        "For each group (row of w), the index of the candidate (scale, lo, hi) whose codes "
        "clip(round(w / scale), lo, hi) * scale have the least squared error (the first of equals).");
}
