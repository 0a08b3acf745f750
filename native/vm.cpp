#include "vm.hpp"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

namespace tvmsplit {
namespace ffi = tvm::ffi;

namespace {

constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR
constexpr size_t kAlign = 64;

struct AlignedAlloc {  // what tvm.runtime.tensor() gives a kernel: 64-byte aligned CPU memory
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(kAlign, (n + kAlign - 1) / kAlign * kAlign + kAlign);
    if (!t->data) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

DLDataType dl_dtype(const std::string& d) {
  if (d == "bool") return {kDLBool, 8, 1};
  if (d == "float16") return {kDLFloat, 16, 1};
  if (d == "float32") return {kDLFloat, 32, 1};
  if (d == "float64") return {kDLFloat, 64, 1};
  if (d == "int8") return {kDLInt, 8, 1};
  if (d == "int16") return {kDLInt, 16, 1};
  if (d == "int32") return {kDLInt, 32, 1};
  if (d == "int64") return {kDLInt, 64, 1};
  if (d == "uint8") return {kDLUInt, 8, 1};
  throw std::runtime_error("dtype " + d + " has no DLPack type here");
}

std::string wire_dtype(DLDataType t) {
  if (t.lanes == 1) {
    if (t.code == kDLBool && t.bits == 8) return "bool";
    if (t.code == kDLUInt && t.bits == 1) return "bool";
    if (t.code == kDLFloat && (t.bits == 16 || t.bits == 32 || t.bits == 64))
      return "float" + std::to_string(t.bits);
    if (t.code == kDLInt && (t.bits == 8 || t.bits == 16 || t.bits == 32 || t.bits == 64))
      return "int" + std::to_string(t.bits);
    if (t.code == kDLUInt && t.bits == 8) return "uint8";
  }
  return "code" + std::to_string(t.code) + "bits" + std::to_string(t.bits) + "x" +
         std::to_string(t.lanes);  // not a wire dtype: encoding refuses it (bad_dtype)
}

void free_shared(void*, void* hint) { delete static_cast<std::shared_ptr<void>*>(hint); }

}  // namespace

zmq::message_t OutputTensor::frame() const {
  if (nbytes <= 64) return zmq::message_t(data, nbytes);  // small: a copy is cheaper
  auto* hold = new std::shared_ptr<void>(owner);
  return zmq::message_t(const_cast<void*>(data), nbytes, free_shared, hold);
}

struct StageRunner::Impl {
  const Stage& stage;
  std::optional<ffi::Module> lib, vm;
  ffi::Function main;
  explicit Impl(const Stage& s) : stage(s) {}
};

StageRunner::StageRunner(const std::string& library, const Stage& stage)
    : impl_(std::make_unique<Impl>(stage)) {
  impl_->lib = ffi::Module::LoadFromFile(library);
  auto load = (*impl_->lib)->GetFunction("vm_load_executable");
  if (!load) throw std::runtime_error(library + " is not a Relax VM library (no vm_load_executable)");
  impl_->vm = (*load)().cast<ffi::Module>();
  auto init = (*impl_->vm)->GetFunction("vm_initialization");
  if (!init) throw std::runtime_error("the VM has no vm_initialization");
  (*init)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  auto main = (*impl_->vm)->GetFunction("main");
  if (!main) throw std::runtime_error(library + " has no function 'main'");
  impl_->main = *main;
}

StageRunner::~StageRunner() = default;

std::map<std::string, OutputTensor> StageRunner::run(
    const std::map<std::string, std::shared_ptr<zmq::message_t>>& inputs) {
  const Stage& st = impl_->stage;
  std::vector<ffi::Tensor> args;
  DLDevice cpu{kDLCPU, 0};
  for (const auto& spec : st.library_inputs) {
    const auto& frame = inputs.at(spec.name);
    ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(spec.shape),
                                             dl_dtype(spec.dtype), cpu);
    if (frame->size() != spec.nbytes())
      throw std::runtime_error("input " + spec.name + " has the wrong size");
    std::memcpy(t.data_ptr(), frame->data(), frame->size());
    args.push_back(std::move(t));
  }
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  ffi::Any result;
  try {
    impl_->main.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
  } catch (const ffi::Error& exc) {  // "ValueError: ..." as Python names TVM's errors
    throw std::runtime_error(exc.kind() + ": " + exc.message());
  }
  std::vector<ffi::Tensor> results;
  if (auto one = result.as<ffi::Tensor>()) {
    results.push_back(*one);
  } else {
    for (const ffi::Any& r : result.cast<ffi::Array<ffi::Any>>()) results.push_back(r.cast<ffi::Tensor>());
  }
  std::map<std::string, OutputTensor> computed;
  for (size_t i = 0; i < st.library_outputs.size() && i < results.size(); ++i) {
    ffi::Tensor t = results[i];
    const DLTensor* dl = t.GetDLTensorPtr();
    if (dl->device.device_type != kDLCPU || !t.IsContiguous())
      throw std::runtime_error("output " + st.library_outputs[i].name +
                               " is not a contiguous CPU tensor");
    OutputTensor o;
    o.dtype = wire_dtype(dl->dtype);
    for (int64_t d : t.shape()) o.shape.push_back(d);
    o.data = static_cast<const char*>(dl->data) + dl->byte_offset;
    o.nbytes = ffi::GetDataSize(*dl);
    o.owner = std::make_shared<ffi::Tensor>(t);
    computed[st.library_outputs[i].name] = std::move(o);
  }
  std::map<std::string, OutputTensor> out;
  for (const auto& spec : st.outputs) {
    auto c = computed.find(spec.name);
    if (c != computed.end()) {
      out[spec.name] = c->second;
      continue;
    }
    auto in = inputs.find(spec.name);
    if (in == inputs.end())
      throw std::runtime_error("output " + spec.name + " is neither computed nor an input");
    OutputTensor o;
    o.dtype = spec.dtype;
    o.shape = spec.shape;
    o.owner = in->second;
    o.data = in->second->data();
    o.nbytes = in->second->size();
    out[spec.name] = std::move(o);
  }
  return out;
}

}  // namespace tvmsplit
