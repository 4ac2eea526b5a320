// torch::python::bind_module gives each net parameters, buffers, train/eval and forward in Python; the
// parts of nn.Module it lacks (state_dict, .to, train propagation, DDP, pickling) live in the Python
// facade dtc.models.CppNet.
#include "nets/bindings.h"

#include <torch/python.h>

#include "dtc/nets.h"
#include "dtc/runtime_model.h"
#include "dtc/runtime_threads.h"
#include "dtc/student_kd.h"

namespace py = pybind11;

void dtc_bind_nets(py::module_& m) {
  using namespace dtc::nets;
  auto nets = m.def_submodule("nets", "dtc's segmentation networks (LibTorch modules)");

  torch::python::bind_module<UNetImpl>(nets, "UNet")
      .def(py::init<int64_t, int64_t>(), py::arg("in_channels") = 3, py::arg("base") = 64)
      .def_readonly("in_channels", &UNetImpl::in_channels)
      .def_readonly("base", &UNetImpl::base)
      .def("features", &UNetImpl::features, py::arg("x"))
      .def("decode", &UNetImpl::decode, py::arg("x"), py::arg("features"))
      .def_readonly("feature_channels", &UNetImpl::feature_channels)
      .def_property_readonly_static("feature_strides", [](py::object) { return UNetImpl::feature_strides(); })
      .def_property_readonly_static("multiple", [](py::object) { return UNetImpl::kMultiple; });

  torch::python::bind_module<UNetPlusPlusImpl>(nets, "UNetPlusPlus")
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("in_channels") = 3, py::arg("width") = 64,
           py::arg("decoder_width") = 32)
      .def("forward_with_heads", &UNetPlusPlusImpl::forward_with_heads, py::arg("x"))
      .def("decode_with_heads", &UNetPlusPlusImpl::decode_with_heads, py::arg("x"), py::arg("features"))
      .def_readonly("in_channels", &UNetPlusPlusImpl::in_channels)
      .def_readonly("width", &UNetPlusPlusImpl::width)
      .def_readonly("decoder_width", &UNetPlusPlusImpl::decoder_width)
      .def("features", &UNetPlusPlusImpl::features, py::arg("x"))
      .def("decode", &UNetPlusPlusImpl::decode, py::arg("x"), py::arg("features"))
      .def_readonly("feature_channels", &UNetPlusPlusImpl::feature_channels)
      .def_property_readonly_static("feature_strides", [](py::object) { return UNetPlusPlusImpl::feature_strides(); })
      .def_property_readonly_static("multiple", [](py::object) { return UNetPlusPlusImpl::kMultiple; });

  torch::python::bind_module<RealtimeStudentImpl>(nets, "RealtimeStudent")
      .def(py::init<int64_t, int64_t>(), py::arg("in_channels") = 3, py::arg("base") = 16)
      .def_readonly("in_channels", &RealtimeStudentImpl::in_channels)
      .def_readonly("base", &RealtimeStudentImpl::base)
      .def("features", &RealtimeStudentImpl::features, py::arg("x"))
      .def("decode", &RealtimeStudentImpl::decode, py::arg("x"), py::arg("features"))
      .def_readonly("feature_channels", &RealtimeStudentImpl::feature_channels)
      .def_property_readonly_static("feature_strides", [](py::object) { return RealtimeStudentImpl::feature_strides(); })
      .def_property_readonly_static("multiple", [](py::object) { return RealtimeStudentImpl::kMultiple; });

  // XDim-KD's 3-D student: forward returns (logits [B, Z, H, W], kd [B, kd_channels, Z, H/8, W/8]).
  torch::python::bind_module<StudentKDImpl>(nets, "StudentKD")
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("in_channels") = 1, py::arg("base") = 32,
           py::arg("kd_channels") = 384)
      .def_readonly("in_channels", &StudentKDImpl::in_channels)
      .def_readonly("base", &StudentKDImpl::base)
      .def_readonly("kd_channels", &StudentKDImpl::kd_channels)
      .def_property_readonly_static("multiple", [](py::object) { return StudentKDImpl::kMultiple; });

  // The C++ runtime's model files (dtc.deploy.export writes them; tests read them back through the
  // runtime's own loader). A runtime Error surfaces in Python as ValueError with its message.
  py::register_exception<dtc::runtime::Error>(nets, "RuntimeModelError", PyExc_ValueError);
  nets.def(
      "save_runtime_model",
      [](const std::string& path, const std::string& net, const std::map<std::string, int64_t>& kwargs,
         const std::map<std::string, at::Tensor>& tensors, int64_t in_channels, const std::vector<double>& mean,
         const std::vector<double>& std, int64_t multiple, const std::vector<int64_t>& train_size, double threshold,
         const std::string& metadata) {
        dtc::runtime::Preprocessing pre;
        pre.in_channels = in_channels;
        pre.mean = mean;
        pre.std = std;
        pre.multiple = multiple;
        if (train_size.size() == 2) pre.train_height = train_size[0], pre.train_width = train_size[1];
        pre.threshold = threshold;
        py::gil_scoped_release no_gil;
        dtc::runtime::save_model(path, net, kwargs, tensors, pre, metadata);
      },
      py::arg("path"), py::arg("net"), py::arg("kwargs"), py::arg("tensors"), py::arg("in_channels"), py::arg("mean"),
      py::arg("std"), py::arg("multiple"), py::arg("train_size"), py::arg("threshold"), py::arg("metadata"));
  nets.def(
      "runtime_probabilities",
      [](const std::string& path, const at::Tensor& frames, const std::string& device) {
        py::gil_scoped_release no_gil;
        return dtc::runtime::Model::load(path, device).probabilities(frames);
      },
      py::arg("path"), py::arg("frames"), py::arg("device") = "cpu",
      "Loads a runtime model file with the C++ runtime's loader and returns its probabilities of `frames`.");
  nets.def(
      "runtime_probabilities_8bit",
      [](const std::string& path, const at::Tensor& pixels, bool bgr) {
        TORCH_CHECK_VALUE(pixels.dim() == 3 && pixels.scalar_type() == at::kByte && pixels.device().is_cpu(),
                          "runtime_probabilities_8bit: pixels must be a uint8 CPU tensor shaped (H, W, C), got ",
                          pixels.sizes(), " ", pixels.scalar_type());
        const at::Tensor dense = pixels.contiguous();
        py::gil_scoped_release no_gil;
        return dtc::runtime::Model::load(path, "cpu")
            .probabilities_8bit(dense.data_ptr<uint8_t>(), dense.size(0), dense.size(1), dense.size(2),
                                dense.size(1) * dense.size(2), bgr);
      },
      py::arg("path"), py::arg("pixels"), py::arg("bgr") = false,
      "The runtime's one-pass path for an 8-bit frame (H, W, C): probabilities (1, 1, H, W).");

  // The runtime's thread-count policy, driven by recorded latencies in tests (tests/deploy).
  using dtc::runtime::ThreadGovernor;
  py::class_<ThreadGovernor>(nets, "ThreadGovernor")
      .def(py::init([](int max_threads, bool adaptive, int probe_every, int max_probe_every, double switch_margin,
                       double collapse_factor) {
             return ThreadGovernor(ThreadGovernor::Options{max_threads, adaptive, probe_every, max_probe_every,
                                                           switch_margin, collapse_factor});
           }),
           py::arg("max_threads"), py::arg("adaptive") = true, py::arg("probe_every") = 30,
           py::arg("max_probe_every") = 480, py::arg("switch_margin") = 0.85, py::arg("collapse_factor") = 2.0)
      .def_property_readonly("threads", &ThreadGovernor::threads)
      .def_property_readonly("home_threads", &ThreadGovernor::home_threads)
      .def_property_readonly("switches", &ThreadGovernor::switches)
      .def_property_readonly("probes", &ThreadGovernor::probes)
      .def_property_readonly("frames_per_count", &ThreadGovernor::frames_per_count)
      .def_property_readonly("counts", &ThreadGovernor::counts)
      .def("warmed", &ThreadGovernor::warmed, py::arg("threads"))
      .def("record", &ThreadGovernor::record, py::arg("ms"));
}
