// Python bindings of the per-frame evaluation kernels (dtc._C.sunseg_frame).
#pragma once

#include <torch/extension.h>

// Adds the metric functions to the module dtc._C (called from PYBIND11_MODULE in bindings/module.cpp).
void dtc_bind_metrics(pybind11::module_& m);
