// torch::python::bind_module gives each net parameters, buffers, train/eval and forward in Python; the
// parts of nn.Module it lacks (state_dict, .to, train propagation, DDP, pickling) live in the Python
// facade dtc.models.CppNet.
#include "nets/bindings.h"

#include <torch/python.h>

#include "dtc/nets.h"

namespace py = pybind11;

void dtc_bind_nets(py::module_& m) {
  using namespace dtc::nets;
  auto nets = m.def_submodule("nets", "dtc's segmentation networks (LibTorch modules)");

  torch::python::bind_module<UNetImpl>(nets, "UNet")
      .def(py::init<int64_t, int64_t>(), py::arg("in_channels") = 3, py::arg("base") = 64)
      .def_readonly("in_channels", &UNetImpl::in_channels)
      .def_readonly("base", &UNetImpl::base)
      .def_property_readonly_static("multiple", [](py::object) { return UNetImpl::kMultiple; });

  torch::python::bind_module<UNetPlusPlusImpl>(nets, "UNetPlusPlus")
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("in_channels") = 3, py::arg("width") = 64,
           py::arg("decoder_width") = 32)
      .def("forward_with_heads", &UNetPlusPlusImpl::forward_with_heads, py::arg("x"))
      .def_readonly("in_channels", &UNetPlusPlusImpl::in_channels)
      .def_readonly("width", &UNetPlusPlusImpl::width)
      .def_readonly("decoder_width", &UNetPlusPlusImpl::decoder_width)
      .def_property_readonly_static("multiple", [](py::object) { return UNetPlusPlusImpl::kMultiple; });

  torch::python::bind_module<RealtimeStudentImpl>(nets, "RealtimeStudent")
      .def(py::init<int64_t, int64_t>(), py::arg("in_channels") = 3, py::arg("base") = 16)
      .def_readonly("in_channels", &RealtimeStudentImpl::in_channels)
      .def_readonly("base", &RealtimeStudentImpl::base)
      .def_property_readonly_static("multiple", [](py::object) { return RealtimeStudentImpl::kMultiple; });
}
