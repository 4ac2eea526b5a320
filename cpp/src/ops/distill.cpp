// The C++ API (dtc/ops.h) of the video-to-image distillation ops (docs/v2i.md): each call goes through
// the dispatcher, so C++ callers get the same kernels and autograd as torch.ops.dtc.*.
#include <ATen/core/dispatch/Dispatcher.h>

#include "dtc/ops.h"

namespace dtc {

at::Tensor edt(const at::Tensor& mask, at::ArrayRef<double> spacing) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dtc::edt", "").typed<at::Tensor(
      const at::Tensor&, at::ArrayRef<double>)>();
  return op.call(mask, spacing);
}

}  // namespace dtc
