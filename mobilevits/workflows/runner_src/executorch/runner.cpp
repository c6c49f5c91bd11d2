// mobilevits native ExecuTorch runner: loads a .pte with the executorch wheel's own C++ runtime
// (Module API, XNNPACK delegate, optimized + quantized kernels, thread pool), feeds .npy inputs,
// times warm-up + N runs, writes the outputs as .npy and prints one JSON line. Built by
// `mobilevits build-runner` (mobilevits/workflows/native.py); the same source builds for aarch64.
//
//   runner --model m.pte --input x.npy [--input ...] [--output-dir DIR] [--threads N]
//          [--warmup W] [--iterations N] [--etdump FILE]
//
// An input may hold several samples stacked on the first axis ((S*B, ...) for a program taking (B, ...)):
// the timings use the first sample, then each sample runs once and the outputs are stacked the same way
// (one process for a whole check set: on an emulated CPU the load is the slow part).
// --etdump writes the runtime's event trace (every XNNPACK operator when the delegate is built with its
// profiler) for executorch.devtools.Inspector.
//
// Any problem: one "error: ..." line on stderr and exit code 2.

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

// The wheel ships libexecutorch_threadpool.so but not its header: declare the two entry points used.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::EValue;

namespace {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// .npy dtype descriptors (little-endian) <-> ExecuTorch scalar types.
struct DType {
  const char* descr;
  ScalarType type;
  size_t size;
};
const DType kDTypes[] = {
    {"<f4", ScalarType::Float, 4}, {"|i1", ScalarType::Char, 1}, {"|u1", ScalarType::Byte, 1},
    {"<i4", ScalarType::Int, 4},   {"<i8", ScalarType::Long, 8}, {"|b1", ScalarType::Bool, 1},
};

const DType& dtype_of(const std::string& descr) {
  for (const auto& d : kDTypes)
    if (descr == d.descr) return d;
  throw Failure("unsupported .npy dtype " + descr + " (float32, int8, uint8, int32, int64, bool)");
}

const DType& dtype_of(ScalarType t) {
  for (const auto& d : kDTypes)
    if (t == d.type) return d;
  throw Failure("output of unsupported scalar type " + std::to_string(static_cast<int>(t)));
}

struct Array {
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

// A .npy file (format 1.0-3.0, C order): the header is a Python dict literal; read descr and shape.
Array read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Failure("cannot open input " + path);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Failure(path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t n = 0;
    f.read(reinterpret_cast<char*>(&n), 2);
    header_len = n;
  } else {
    f.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, ' ');
  f.read(header.data(), header_len);
  auto field = [&](const std::string& key) {
    auto at = header.find("'" + key + "'");
    if (at == std::string::npos) throw Failure(path + ": .npy header without " + key);
    return header.substr(header.find(':', at) + 1);
  };
  std::string descr = field("descr");
  descr = descr.substr(descr.find('\'') + 1);
  descr = descr.substr(0, descr.find('\''));
  if (field("fortran_order").find("True") < field("fortran_order").find(','))
    throw Failure(path + ": Fortran-ordered arrays are not supported (save with np.ascontiguousarray)");
  Array a;
  a.dtype = &dtype_of(descr);
  std::string shape = field("shape");
  shape = shape.substr(shape.find('(') + 1, shape.find(')') - shape.find('(') - 1);
  std::stringstream ss(shape);
  std::string item;
  size_t count = 1;
  while (std::getline(ss, item, ','))
    if (item.find_first_not_of(' ') != std::string::npos) {
      a.shape.push_back(std::stoll(item));
      count *= static_cast<size_t>(a.shape.back());
    }
  a.data.resize(count * a.dtype->size);
  if (!f.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(a.data.size())))
    throw Failure(path + ": file shorter than its header says");
  return a;
}

// Write to a temporary name, then rename: a reader never sees half an output.
void write_npy(const std::string& path, const DType& dtype, const std::vector<int64_t>& shape,
               const void* data, size_t nbytes) {
  std::string shape_s = "(";
  for (auto d : shape) shape_s += std::to_string(d) + ",";
  if (shape.size() > 1) shape_s.pop_back();
  shape_s += ")";
  std::string header = std::string("{'descr': '") + dtype.descr + "', 'fortran_order': False, 'shape': " +
                       shape_s + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw Failure("cannot write " + tmp);
    f.write("\x93NUMPY\x01\x00", 8);
    uint16_t n = static_cast<uint16_t>(header.size());
    f.write(reinterpret_cast<const char*>(&n), 2);
    f << header;
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
    if (!f) throw Failure("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Failure("cannot rename " + tmp + " to " + path);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

int run(int argc, char** argv) {
  std::string model, output_dir, etdump_path;
  std::vector<std::string> inputs;
  int threads = 1, warmup = 3, iterations = 10;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Failure(arg + " needs a value");
      return argv[++i];
    };
    auto number = [&](int min) {
      std::string v = value();
      try {
        size_t used = 0;
        int n = std::stoi(v, &used);
        if (used == v.size() && n >= min) return n;
      } catch (const std::exception&) {
      }
      throw Failure(arg + " must be an integer >= " + std::to_string(min) + ", got " + v);
    };
    if (arg == "--model") model = value();
    else if (arg == "--input") inputs.push_back(value());
    else if (arg == "--output-dir") output_dir = value();
    else if (arg == "--threads") threads = number(1);
    else if (arg == "--warmup") warmup = number(0);
    else if (arg == "--iterations") iterations = number(1);
    else if (arg == "--etdump") etdump_path = value();
    else throw Failure("unknown flag " + arg + " (see the usage at the top of runner.cpp)");
  }
  if (model.empty()) throw Failure("--model PATH.pte is required");

  // XNNPACK binds the pool when the program loads: size it first.
  executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);
  auto t_load = std::chrono::steady_clock::now();
  std::unique_ptr<executorch::runtime::EventTracer> tracer;
  if (!etdump_path.empty()) tracer = std::make_unique<executorch::etdump::ETDumpGen>();
  Module module(model, Module::LoadMode::File, std::move(tracer));
  auto loaded = module.load_method("forward");
  if (loaded != executorch::runtime::Error::Ok)
    throw Failure("cannot load method forward of " + model + " (error " + std::to_string(static_cast<int>(loaded)) +
                  ": not an ExecuTorch program, corrupt, or it needs a backend or kernel this runner lacks)");
  double load_ms = ms_since(t_load);
  auto meta = module.method_meta("forward");
  if (!meta.ok()) throw Failure("cannot read the signature of " + model);
  if (inputs.size() != meta->num_inputs())
    throw Failure(model + " takes " + std::to_string(meta->num_inputs()) + " input(s), got " +
                  std::to_string(inputs.size()) + " --input");

  std::vector<Array> arrays;
  std::vector<std::vector<int64_t>> wanted;
  int64_t num_samples = 1;
  for (size_t k = 0; k < inputs.size(); ++k) {
    arrays.push_back(read_npy(inputs[k]));
    Array& a = arrays.back();
    auto info = meta->input_tensor_meta(k);
    if (!info.ok()) throw Failure("input " + std::to_string(k) + " of " + model + " is not a tensor");
    std::vector<int64_t> want(info->sizes().begin(), info->sizes().end());
    // (S*B, ...) for a program taking (B, ...): S samples
    bool stacked = !want.empty() && a.shape.size() == want.size() && want[0] > 0 && a.shape[0] % want[0] == 0 &&
                   std::equal(want.begin() + 1, want.end(), a.shape.begin() + 1);
    int64_t s = stacked ? a.shape[0] / want[0] : (a.shape == want ? 1 : 0);
    if (s < 1 || a.dtype->type != info->scalar_type() || (k > 0 && s != num_samples))
      throw Failure(inputs[k] + " is " + a.dtype->descr + " " + shape_str(a.shape) + " but the program takes " +
                    dtype_of(info->scalar_type()).descr + " " + shape_str(want) +
                    (k > 0 ? " (every input must stack the same number of samples)" : ""));
    num_samples = s;
    wanted.push_back(want);
  }
  // The program's inputs point into sample `s` of each array.
  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<EValue> values;
  auto bind_sample = [&](int64_t s) {
    tensors.clear();
    values.clear();
    for (size_t k = 0; k < arrays.size(); ++k) {
      Array& a = arrays[k];
      size_t sample_bytes = a.data.size() / static_cast<size_t>(num_samples);
      std::vector<executorch::aten::SizesType> sizes(wanted[k].begin(), wanted[k].end());
      tensors.push_back(executorch::extension::make_tensor_ptr(sizes, a.data.data() + s * sample_bytes,
                                                               a.dtype->type));
      values.emplace_back(tensors.back());
    }
  };
  bind_sample(0);

  auto execute = [&]() {
    auto r = module.forward(values);
    if (!r.ok()) throw Failure("forward failed with error " + std::to_string(static_cast<int>(r.error())));
    return std::move(*r);
  };
  auto t_first = std::chrono::steady_clock::now();
  auto outputs = execute();
  double first_ms = ms_since(t_first);
  for (int i = 0; i < warmup; ++i) execute();
  std::vector<double> samples;
  for (int i = 0; i < iterations; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    outputs = execute();
    samples.push_back(ms_since(t0));
  }

  if (!etdump_path.empty()) {  // before the extra samples: the trace holds the timed runs only
    auto* gen = static_cast<executorch::etdump::ETDumpGen*>(module.event_tracer());
    auto dump = gen->get_etdump_data();
    if (dump.buf == nullptr || dump.size == 0) throw Failure("the runtime recorded no ETDump events");
    std::string tmp = etdump_path + ".partial";
    {
      std::ofstream f(tmp, std::ios::binary);
      f.write(static_cast<const char*>(dump.buf), static_cast<std::streamsize>(dump.size));
      if (!f) throw Failure("cannot write " + tmp);
    }
    std::free(dump.buf);
    if (std::rename(tmp.c_str(), etdump_path.c_str()) != 0) throw Failure("cannot rename " + tmp);
  }

  // Outputs of every sample, stacked on the first axis: (S*B, ...).
  std::vector<std::vector<uint8_t>> stacked(outputs.size());
  auto keep = [&](const std::vector<EValue>& outs) {
    for (size_t k = 0; k < outs.size(); ++k)
      if (outs[k].isTensor()) {
        const auto& t = outs[k].toTensor();
        auto* p = static_cast<const uint8_t*>(t.const_data_ptr());
        stacked[k].insert(stacked[k].end(), p, p + t.nbytes());
      }
  };
  if (!output_dir.empty()) {
    keep(outputs);
    for (int64_t s = 1; s < num_samples; ++s) {
      bind_sample(s);
      keep(execute());
    }
  }

  std::string written = "[";
  for (size_t k = 0; k < outputs.size(); ++k) {
    if (!outputs[k].isTensor()) continue;
    if (output_dir.empty()) continue;
    const auto& t = outputs[k].toTensor();
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
    if (!shape.empty()) shape[0] *= num_samples;
    std::string path = output_dir + "/output_" + std::to_string(k) + ".npy";
    write_npy(path, dtype_of(t.scalar_type()), shape, stacked[k].data(), stacked[k].size());
    written += std::string(written.size() > 1 ? ", " : "") + "\"" + json_escape(path) + "\"";
  }
  written += "]";

  std::ostringstream js;
  js.precision(6);
  js << std::fixed << "{\"runner\": \"mobilevits-executorch\", \"format\": 1, \"model\": \"" << json_escape(model)
     << "\", \"threads\": " << threads << ", \"load_ms\": " << load_ms << ", \"first_inference_ms\": " << first_ms
     << ", \"warmup\": " << warmup << ", \"inputs_stacked\": " << num_samples << ", \"samples_ms\": [";
  for (size_t i = 0; i < samples.size(); ++i) js << (i ? ", " : "") << samples[i];
#if defined(__aarch64__)
  const char* arch = "aarch64";
#elif defined(__x86_64__)
  const char* arch = "x86_64";
#else
  const char* arch = "unknown";
#endif
  js << "], \"outputs\": " << written << ", \"arch\": \"" << arch << "\", \"compiler\": \"" << json_escape(__VERSION__)
     << "\"}";
  std::printf("%s\n", js.str().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
