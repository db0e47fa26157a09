// The emulator's profiler (built only with the `emu-profile` cargo feature, see build.rs): per-launch and
// per-call-site counters of what a GPU's memory system would see.
//
// How addresses are captured. The kernels (the unity translation unit with the emulator runtime) are
// compiled with GCC's kernel address sanitizer in outline mode
//     -fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0
// so that every plain C++ load and store of the kernels calls `__asan_{load,store}{1,2,4,8,16,N}_noabort
// (addr)`; this file defines those functions (nothing of libasan is linked). `__builtin_return_address(0)`
// inside them is the call site in the kernel, symbolised later with the binary's line tables. This file
// itself is a separate, uninstrumented translation unit. The warp-level PTX helpers (ldmatrix, cp.async)
// report their accesses explicitly with their source line (`emu::prof::access`), and the runtime reports
// every completed warp collective and block barrier by name.
//
// Grouping. A GPU executes a load of a warp as one request for the lanes that are active. Here lanes run
// one after another, so the n-th execution of a call site by each lane of a warp (counted since the last
// __syncthreads) forms one warp-level request; requests are evaluated when the block reaches a
// __syncthreads or ends.
//
// What an address is: inside a device buffer (emu_malloc) is global memory; inside the launch's dynamic
// shared memory, or among the OS thread's static TLS (static `__shared__` arrays are `thread_local`) apart
// from the emulator's own thread-locals, is shared memory; everything else (fiber stacks: registers and
// local memory, kernel parameters) is not counted.
//
// Counters of a request:
//   global: 32-byte sectors touched (actual) and ceil(distinct bytes / 32) (ideal);
//   shared: wavefronts: a request is split into phases (32 lanes for accesses of up to 4 bytes, 16 for 8
//           bytes, 8 for 16 bytes and for each 8x8 matrix of ldmatrix); a phase costs as many wavefronts as
//           the most loaded bank has distinct 4-byte words (1 = conflict-free, 32 = fully serialised); the
//           ideal is one per phase. The bank-conflict degree is wavefronts / ideal;
//   both:   active lanes (popcount of the lanes that took part).
#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_emu.h"

namespace emu {
namespace prof {

namespace {

struct Req {
    unsigned mask = 0;
    uintptr_t addr[32];
    unsigned short size[32];
};

struct SiteStats {
    // identity
    uintptr_t pc = 0;  // return address of the hook (0 for helper-reported sites)
    const char* file = nullptr;
    int line = 0;
    int flags = 0;  // kStore | kLdmatrix | kCpAsync
    int space = 0;  // 0 global, 1 shared
    // counters
    uint64_t requests = 0, lanes = 0, bytes = 0;
    uint64_t sectors = 0, ideal_sectors = 0;
    uint64_t wavefronts = 0, ideal_wavefronts = 0;
    unsigned min_size = 0, max_size = 0;
};

struct SiteKey {
    uintptr_t a;
    int line;
    int flags;
    bool operator==(const SiteKey& o) const { return a == o.a && line == o.line && flags == o.flags; }
};
struct SiteKeyHash {
    size_t operator()(const SiteKey& k) const {
        return std::hash<uintptr_t>()(k.a) ^ (size_t(k.line) * 0x9e3779b97f4a7c15ull) ^ (size_t(k.flags) << 7);
    }
};

struct LaunchRec {
    std::string kernel;
    dim3 grid, block;
    unsigned smem = 0;
    uint64_t blocks_run = 0;
    std::vector<SiteStats> sites;
    std::unordered_map<SiteKey, int, SiteKeyHash> site_index;
    std::map<std::string, uint64_t> instr;
};

struct Range {
    uintptr_t lo, hi;
};

struct Active {
    LaunchRec* rec = nullptr;
    int nthreads = 0;
    std::vector<Range> globals;  // sorted
    Range dyn_smem{0, 0};
    Range tls{0, 0};
    Range tls_excluded[5];
    // per warp: (site << 32 | occurrence) -> request
    std::vector<std::unordered_map<uint64_t, Req>> pending;
    // per thread: site -> executions since the last flush
    std::vector<std::unordered_map<int, unsigned>> occurrence;
};

struct State {
    bool enabled = false;
    long max_blocks = 0;  // 0: every block
    std::vector<LaunchRec> launches;
    Active active;
    bool in_launch = false;
    std::string json;
};

thread_local State* tl_state = nullptr;
thread_local Active* tl_active = nullptr;  // set while a profiled launch runs

bool in(const Range& r, uintptr_t a) { return a >= r.lo && a < r.hi; }

template <typename T>
Range range_of(const T& v) {
    uintptr_t a = reinterpret_cast<uintptr_t>(&v);
    return Range{a, a + sizeof(T)};
}

struct TlsFind {
    uintptr_t probe;
    Range found;
};

int tls_cb(struct dl_phdr_info* info, size_t, void* data) {
    TlsFind* f = static_cast<TlsFind*>(data);
    if (!info->dlpi_tls_data) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_TLS) continue;
        uintptr_t lo = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
        if (f->probe >= lo && f->probe < lo + ph.p_memsz) {
            f->found = Range{lo, lo + ph.p_memsz};
            return 1;
        }
    }
    return 0;
}

// -1 not counted, 0 global, 1 shared
int classify(const Active* A, uintptr_t a) {
    if (in(A->dyn_smem, a)) return 1;
    if (in(A->tls, a)) {
        for (const Range& r : A->tls_excluded)
            if (in(r, a)) return -1;
        return 1;
    }
    const std::vector<Range>& g = A->globals;
    auto it = std::upper_bound(g.begin(), g.end(), a, [](uintptr_t x, const Range& r) { return x < r.lo; });
    if (it == g.begin()) return -1;
    --it;
    return in(*it, a) ? 0 : -1;
}

int site_of(LaunchRec* R, SiteKey key, uintptr_t pc, const char* file, int line, int flags, int space) {
    auto it = R->site_index.find(key);
    if (it != R->site_index.end()) return it->second;
    SiteStats s;
    s.pc = pc;
    s.file = file;
    s.line = line;
    s.flags = flags;
    s.space = space;
    R->sites.push_back(s);
    int idx = int(R->sites.size()) - 1;
    R->site_index.emplace(key, idx);
    return idx;
}

void record(Active* A, int site, uintptr_t a, unsigned size) {
    Fiber* f = tl_cur;
    int t = f->linear;
    unsigned occ = A->occurrence[t][site]++;
    Req& r = A->pending[t >> 5][(uint64_t(site) << 32) | occ];
    int lane = t & 31;
    r.mask |= 1u << lane;
    r.addr[lane] = a;
    r.size[lane] = (unsigned short)size;
}

void hook(void* p, unsigned size, int flags, void* ret) {
    Active* A = tl_active;
    if (!A || !tl_cur) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    int space = classify(A, a);
    if (space < 0) return;
    uintptr_t pc = reinterpret_cast<uintptr_t>(ret);
    int site = site_of(A->rec, SiteKey{pc, -1, flags | space << 4}, pc, nullptr, 0, flags, space);
    record(A, site, a, size);
}

// Distinct 32-byte sectors and distinct bytes of the lanes' accesses.
void global_cost(const Req& r, uint64_t* sectors, uint64_t* bytes) {
    std::vector<uintptr_t> sec;
    std::vector<std::pair<uintptr_t, uintptr_t>> iv;
    for (int l = 0; l < 32; ++l) {
        if (!(r.mask >> l & 1) || r.size[l] == 0) continue;
        uintptr_t lo = r.addr[l], hi = r.addr[l] + r.size[l];
        for (uintptr_t s = lo >> 5; s <= (hi - 1) >> 5; ++s) sec.push_back(s);
        iv.push_back({lo, hi});
    }
    std::sort(sec.begin(), sec.end());
    *sectors = uint64_t(std::unique(sec.begin(), sec.end()) - sec.begin());
    std::sort(iv.begin(), iv.end());
    uint64_t total = 0;
    uintptr_t cur_lo = 0, cur_hi = 0;
    bool open = false;
    for (auto& [lo, hi] : iv) {
        if (open && lo <= cur_hi) {
            cur_hi = std::max(cur_hi, hi);
        } else {
            if (open) total += cur_hi - cur_lo;
            cur_lo = lo;
            cur_hi = hi;
            open = true;
        }
    }
    if (open) total += cur_hi - cur_lo;
    *bytes = total;
}

// Wavefronts of a shared-memory request, and the conflict-free number (one per phase with an active lane).
void shared_cost(const Req& r, bool ldmatrix, uint64_t* wavefronts, uint64_t* ideal) {
    unsigned maxsize = 0;
    for (int l = 0; l < 32; ++l)
        if (r.mask >> l & 1) maxsize = std::max<unsigned>(maxsize, r.size[l]);
    int per_phase = ldmatrix || maxsize > 8 ? 8 : maxsize > 4 ? 16 : 32;
    *wavefronts = 0;
    *ideal = 0;
    for (int p0 = 0; p0 < 32; p0 += per_phase) {
        std::vector<std::pair<unsigned, uintptr_t>> bw;  // (bank, word)
        for (int l = p0; l < p0 + per_phase; ++l) {
            if (!(r.mask >> l & 1) || r.size[l] == 0) continue;
            uintptr_t w0 = r.addr[l] >> 2, w1 = (r.addr[l] + r.size[l] - 1) >> 2;
            for (uintptr_t w = w0; w <= w1; ++w) bw.push_back({unsigned(w & 31), w});
        }
        if (bw.empty()) continue;
        std::sort(bw.begin(), bw.end());
        bw.erase(std::unique(bw.begin(), bw.end()), bw.end());
        unsigned worst = 0, run = 0, bank = ~0u;
        for (auto& [b, w] : bw) {
            run = b == bank ? run + 1 : 1;
            bank = b;
            worst = std::max(worst, run);
        }
        *wavefronts += worst;
        *ideal += 1;
    }
}

const char* op_name(const SiteStats& s) {
    if (s.flags & kProfLdmatrix) return "ldmatrix";
    if (s.flags & kProfCpAsync) return s.space ? "cp.async.st.shared" : "cp.async.ld.global";
    if (s.space) return s.flags & kProfStore ? "st.shared" : "ld.shared";
    return s.flags & kProfStore ? "st.global" : "ld.global";
}

void flush(Active* A) {
    LaunchRec* R = A->rec;
    for (auto& warp : A->pending) {
        for (auto& [key, r] : warp) {
            SiteStats& s = R->sites[key >> 32];
            s.requests++;
            int lanes = __builtin_popcount(r.mask);
            s.lanes += lanes;
            for (int l = 0; l < 32; ++l) {
                if (!(r.mask >> l & 1)) continue;
                s.bytes += r.size[l];
                if (!s.min_size || r.size[l] < s.min_size) s.min_size = r.size[l];
                s.max_size = std::max<unsigned>(s.max_size, r.size[l]);
            }
            if (s.space == 0) {
                uint64_t sec, bytes;
                global_cost(r, &sec, &bytes);
                s.sectors += sec;
                s.ideal_sectors += (bytes + 31) / 32;
            } else {
                uint64_t wf, ideal;
                shared_cost(r, s.flags & kProfLdmatrix, &wf, &ideal);
                s.wavefronts += wf;
                s.ideal_wavefronts += ideal;
            }
            // ldmatrix is counted by its warp collective; cp.async once, by its shared-memory side
            if (s.flags & kProfCpAsync) {
                if (s.space == 1) R->instr["cp.async"]++;
            } else if (!(s.flags & kProfLdmatrix)) {
                R->instr[op_name(s)]++;
            }
        }
        warp.clear();
    }
    for (auto& o : A->occurrence) o.clear();
}

void json_str(std::string& o, const char* s) {
    o += '"';
    for (; s && *s; ++s) {
        if (*s == '"' || *s == '\\') o += '\\';
        if ((unsigned char)*s < 0x20) continue;
        o += *s;
    }
    o += '"';
}

std::string build_json(State* S) {
    std::string o = "[";
    char buf[256];
    for (size_t i = 0; i < S->launches.size(); ++i) {
        const LaunchRec& R = S->launches[i];
        if (i) o += ",";
        o += "\n{\"kernel\":";
        json_str(o, R.kernel.c_str());
        snprintf(buf, sizeof buf, ",\"grid\":[%u,%u,%u],\"block\":[%u,%u,%u],\"smem\":%u,\"blocks_run\":%llu", R.grid.x,
                 R.grid.y, R.grid.z, R.block.x, R.block.y, R.block.z, R.smem, (unsigned long long)R.blocks_run);
        o += buf;
        o += ",\"instructions\":{";
        bool first = true;
        for (auto& [name, n] : R.instr) {
            if (!first) o += ",";
            first = false;
            json_str(o, name.c_str());
            o += ":" + std::to_string(n);
        }
        o += "},\"sites\":[";
        for (size_t j = 0; j < R.sites.size(); ++j) {
            const SiteStats& s = R.sites[j];
            if (j) o += ",";
            o += "{\"op\":";
            json_str(o, op_name(s));
            if (s.pc) {
                Dl_info info;
                uintptr_t base = 0;
                const char* module = "";
                if (dladdr(reinterpret_cast<void*>(s.pc), &info) && info.dli_fname) {
                    base = reinterpret_cast<uintptr_t>(info.dli_fbase);
                    module = info.dli_fname;
                }
                snprintf(buf, sizeof buf, ",\"pc\":%llu", (unsigned long long)(s.pc - base));
                o += buf;
                o += ",\"module\":";
                json_str(o, module);
            } else {
                o += ",\"file\":";
                json_str(o, s.file);
                o += ",\"line\":" + std::to_string(s.line);
            }
            snprintf(buf, sizeof buf,
                     ",\"requests\":%llu,\"lanes\":%llu,\"bytes\":%llu,\"min_size\":%u,\"max_size\":%u,\"sectors\":%llu,"
                     "\"ideal_sectors\":%llu,\"wavefronts\":%llu,\"ideal_wavefronts\":%llu}",
                     (unsigned long long)s.requests, (unsigned long long)s.lanes, (unsigned long long)s.bytes,
                     s.min_size, s.max_size, (unsigned long long)s.sectors, (unsigned long long)s.ideal_sectors,
                     (unsigned long long)s.wavefronts, (unsigned long long)s.ideal_wavefronts);
            o += buf;
        }
        o += "]}";
    }
    o += "\n]\n";
    return o;
}

}  // namespace

void access(Site site, const void* p, int size, int flags) {
    Active* A = tl_active;
    if (!A || !tl_cur) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    int space = classify(A, a);
    if (space < 0) return;
    int s = site_of(A->rec, SiteKey{reinterpret_cast<uintptr_t>(site.file), site.line, flags | space << 4}, 0,
                    site.file, site.line, flags, space);
    record(A, s, a, unsigned(size));
}

bool launch_begin(const char* kernel, dim3 grid, dim3 block, unsigned smem, const void* smem_ptr,
                  const uintptr_t* allocs, const size_t* sizes, size_t nallocs) {
    State* S = tl_state;
    if (!S || !S->enabled) return false;
    S->launches.emplace_back();
    LaunchRec* R = &S->launches.back();
    R->kernel = kernel;
    R->grid = grid;
    R->block = block;
    R->smem = smem;
    Active& A = S->active;
    A = Active{};
    A.rec = R;
    A.nthreads = int(block.x * block.y * block.z);
    for (size_t i = 0; i < nallocs; ++i) A.globals.push_back(Range{allocs[i], allocs[i] + sizes[i]});
    std::sort(A.globals.begin(), A.globals.end(), [](const Range& x, const Range& y) { return x.lo < y.lo; });
    uintptr_t sp = reinterpret_cast<uintptr_t>(smem_ptr);
    A.dyn_smem = Range{sp, sp + smem};
    TlsFind f{reinterpret_cast<uintptr_t>(&tl_cur), Range{0, 0}};
    dl_iterate_phdr(tls_cb, &f);
    A.tls = f.found;
    A.tls_excluded[0] = range_of(tl_cur);
    A.tls_excluded[1] = range_of(tl_launch);
    A.tls_excluded[2] = range_of(tl_block_idx);
    A.tls_excluded[3] = range_of(tl_block_dim);
    A.tls_excluded[4] = range_of(tl_grid_dim);
    A.pending.resize((A.nthreads + 31) / 32);
    A.occurrence.resize(A.nthreads);
    tl_active = &A;
    S->in_launch = true;
    return true;
}

bool run_block(unsigned long linear, unsigned long total) {
    State* S = tl_state;
    if (!S || !S->in_launch || S->max_blocks <= 0 || total <= (unsigned long)S->max_blocks) return true;
    // An even sample that keeps the first and the last block (ragged edges).
    unsigned long stride = (total + S->max_blocks - 1) / S->max_blocks;
    return linear % stride == 0 || linear == total - 1;
}

void block_begin() {
    if (tl_active) tl_active->rec->blocks_run++;
}

void block_sync() {
    if (tl_active) flush(tl_active);
}

void collective(const char* name) {
    if (tl_active) tl_active->rec->instr[name]++;
}

void barrier_done(int nthreads) {
    if (tl_active) tl_active->rec->instr["bar.sync"] += uint64_t((nthreads + 31) / 32);
}

void launch_end() {
    State* S = tl_state;
    if (!S || !S->in_launch) return;
    if (tl_active) flush(tl_active);
    tl_active = nullptr;
    S->active = Active{};
    S->in_launch = false;
}

}  // namespace prof
}  // namespace emu

// ---------------------------------------------------------------------------------------------------
// The sanitizer's outline checks: the kernels call these for every load and store.
// ---------------------------------------------------------------------------------------------------
#define EMU_PROF_HOOK(n)                                                                                          \
    extern "C" void __asan_load##n##_noabort(void* p) { emu::prof::hook(p, n, 0, __builtin_return_address(0)); } \
    extern "C" void __asan_store##n##_noabort(void* p) {                                                          \
        emu::prof::hook(p, n, emu::kProfStore, __builtin_return_address(0));                                      \
    }
EMU_PROF_HOOK(1)
EMU_PROF_HOOK(2)
EMU_PROF_HOOK(4)
EMU_PROF_HOOK(8)
EMU_PROF_HOOK(16)
extern "C" void __asan_loadN_noabort(void* p, size_t n) {
    emu::prof::hook(p, unsigned(n), 0, __builtin_return_address(0));
}
extern "C" void __asan_storeN_noabort(void* p, size_t n) {
    emu::prof::hook(p, unsigned(n), emu::kProfStore, __builtin_return_address(0));
}
extern "C" void __asan_handle_no_return() {}
extern "C" void __asan_before_dynamic_init(const char*) {}
extern "C" void __asan_after_dynamic_init() {}

// ---------------------------------------------------------------------------------------------------
// C API (src/device/emu.rs)
// ---------------------------------------------------------------------------------------------------
extern "C" {

int emu_profile_available() { return 1; }

// Starts recording every launch of the calling thread (clearing earlier records); `max_blocks` > 0 runs
// only an even sample of that many blocks of larger grids (the first and the last included).
void emu_profile_start(long max_blocks) {
    using namespace emu::prof;
    if (!tl_state) tl_state = new State();
    tl_state->enabled = true;
    tl_state->max_blocks = max_blocks;
    tl_state->launches.clear();
}

// Stops recording and returns the records as JSON (valid until the next call on this thread).
const char* emu_profile_stop() {
    using namespace emu::prof;
    if (!tl_state) return "[]";
    tl_state->enabled = false;
    tl_state->json = build_json(tl_state);
    tl_state->launches.clear();
    return tl_state->json.c_str();
}

}  // extern "C"
