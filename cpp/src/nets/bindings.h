// Python bindings of the networks (dtc._C.nets).
#pragma once

#include <torch/extension.h>

// Adds the submodule dtc._C.nets (called from PYBIND11_MODULE in bindings/module.cpp). Each net is bound
// with torch::python::bind_module: dtc._C.nets.<Net> is a torch.nn.cpp.ModuleWrapper subclass and
// dtc._C.nets.cpp.<Net> the raw pybind11 class that python/dtc/models wraps in a full nn.Module facade.
void dtc_bind_nets(pybind11::module_& m);
