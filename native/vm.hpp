// One stage library run with TVM's Relax VM (C++ runtime only: libtvm_runtime + libtvm_ffi),
// as tvmsplit/runtime/stage.py's StageRunner does in Python.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "manifest.hpp"

namespace tvmsplit {

struct OutputTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::shared_ptr<void> owner;  // keeps the bytes alive (a TVM tensor or an input frame)
  const void* data = nullptr;
  size_t nbytes = 0;
  zmq::message_t frame() const;  // zero-copy: the frame holds a reference to owner
};

class StageRunner {
 public:
  // Loads the library and initialises the VM on the CPU (pooled allocator); throws on failure.
  StageRunner(const std::string& library, const Stage& stage);
  ~StageRunner();
  StageRunner(const StageRunner&) = delete;
  StageRunner& operator=(const StageRunner&) = delete;

  // Inputs by name (each frame checked against the stage's inputs by the caller); the stage's
  // outputs by name: computed ones, plus those forwarded unchanged from the inputs.
  std::map<std::string, OutputTensor> run(
      const std::map<std::string, std::shared_ptr<zmq::message_t>>& inputs);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tvmsplit
