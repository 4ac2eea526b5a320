# Describe the torch that the running Python imports, as an imported target `dtc::torch`.
#
# Why not find_package(Torch)? For a CUDA build of torch, TorchConfig insists on a CUDA toolkit
# even when dtc is built CPU-only, and it replaces CMAKE_CUDA_ARCHITECTURES with its own
# arch detection (every arch when no GPU is visible, which multiplies nvcc time). Asking Python
# gives the same include paths, libraries and ABI that torch.utils.cpp_extension uses, and leaves
# the CUDA decision to us.

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
"import torch, torch.utils.cpp_extension as ce, os
print(torch.__version__)
print(torch.version.cuda or '')
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(','.join(ce.include_paths()))
print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"
  OUTPUT_VARIABLE _dtc_torch_out
  ERROR_VARIABLE _dtc_torch_err
  RESULT_VARIABLE _dtc_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _dtc_torch_rc EQUAL 0)
  message(FATAL_ERROR
    "dtc builds against the torch installed in the Python that runs the build, but `import torch` "
    "failed in ${Python_EXECUTABLE}:\n${_dtc_torch_err}\n"
    "Install torch first, then build dtc WITHOUT build isolation so the build sees it:\n"
    "  pip install --no-build-isolation .")
endif()
string(REPLACE "\n" ";" _dtc_torch_lines "${_dtc_torch_out}")
list(GET _dtc_torch_lines 0 DTC_TORCH_VERSION)
list(GET _dtc_torch_lines 1 DTC_TORCH_CUDA_VERSION)
list(GET _dtc_torch_lines 2 DTC_TORCH_CXX11_ABI)
list(GET _dtc_torch_lines 3 _dtc_torch_includes)
list(GET _dtc_torch_lines 4 DTC_TORCH_LIB_DIR)
string(REPLACE "," ";" _dtc_torch_includes "${_dtc_torch_includes}")

set(_dtc_torch_libs)
foreach(lib c10 torch torch_cpu torch_python)
  find_library(DTC_LIB_${lib} NAMES ${lib} PATHS "${DTC_TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
  list(APPEND _dtc_torch_libs "${DTC_LIB_${lib}}")
endforeach()

# dtc::libtorch: LibTorch without its Python bindings, for programs that run without Python (the C++
# runtime); dtc::torch adds torch_python for the extension module.
add_library(dtc_libtorch INTERFACE)
add_library(dtc::libtorch ALIAS dtc_libtorch)
target_include_directories(dtc_libtorch SYSTEM INTERFACE ${_dtc_torch_includes})
target_link_libraries(dtc_libtorch INTERFACE "${DTC_LIB_c10}" "${DTC_LIB_torch}" "${DTC_LIB_torch_cpu}")
target_compile_definitions(dtc_libtorch INTERFACE _GLIBCXX_USE_CXX11_ABI=${DTC_TORCH_CXX11_ABI})
add_library(dtc_torch INTERFACE)
add_library(dtc::torch ALIAS dtc_torch)
target_link_libraries(dtc_torch INTERFACE dtc_libtorch "${DTC_LIB_torch_python}")
message(STATUS "dtc: torch ${DTC_TORCH_VERSION} (CUDA '${DTC_TORCH_CUDA_VERSION}', cxx11 ABI ${DTC_TORCH_CXX11_ABI}) at ${DTC_TORCH_LIB_DIR}")

function(dtc_torch_add_cuda target)
  foreach(lib c10_cuda torch_cuda)
    find_library(DTC_LIB_${lib} NAMES ${lib} PATHS "${DTC_TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
    target_link_libraries(${target} PRIVATE "${DTC_LIB_${lib}}")
  endforeach()
endfunction()
