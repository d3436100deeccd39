// The private extension module edgecompress._core. Each area registers its own functions.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_runtime(py::module_& m);
void register_gemm(py::module_& m);
void register_gemm_q4(py::module_& m);
void register_sparse(py::module_& m);
void register_dense(py::module_& m);
void register_sparse_nm(py::module_& m);
void register_peak(py::module_& m);
void register_engine(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "edgecompress native core (private: use the edgecompress package)";
  register_runtime(m);
  register_gemm(m);
  register_gemm_q4(m);
  register_sparse(m);
  register_dense(m);
  register_sparse_nm(m);
  register_peak(m);
  register_engine(m);
}
