// The Python module dtc._C. Loading it runs the static TORCH_LIBRARY registrations of every op
// (torch.ops.dtc.*); pybind11 binds what is not a tensor op.
#include <torch/extension.h>

#include <string>

#include "metrics/metrics_bindings.h"
#include "nets/bindings.h"

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = DTC_TORCH_VERSION;
  info["cuda"] = bool(DTC_WITH_CUDA);
#ifdef DTC_CUDA_VERSION
  info["cuda_version"] = DTC_CUDA_VERSION;
#else
  info["cuda_version"] = pybind11::none();
#endif
  info["cuda_archs"] = std::string(DTC_CUDA_ARCHS);
  info["opencv"] = bool(DTC_WITH_OPENCV);
#ifdef DTC_OPENCV_VERSION
  info["opencv_version"] = DTC_OPENCV_VERSION;
#else
  info["opencv_version"] = pybind11::none();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["compiler"] = std::string(__VERSION__);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dtc's compiled core: tensor ops (torch.ops.dtc.*) and bindings";
  m.def("build_info", &build_info, "What this build of dtc._C contains");
  dtc_bind_metrics(m);
  dtc_bind_nets(m);
}
