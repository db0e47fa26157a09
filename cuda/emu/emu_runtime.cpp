// The emulator's runtime: fibers and their context switch, the block scheduler, the block barrier, the
// generic warp collective, guarded device memory, the fault handler and the C API called from Rust
// (`src/device/emu.rs`). Included once, by the unity translation unit `cuda/emu/emu_all.cpp`.
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <random>

#include "cuda_emu.h"

// ---------------------------------------------------------------------------------------------------
// Context switch: save the callee-saved registers on the current stack, store its stack pointer, load
// the other one and pop. 10 ns instead of swapcontext's 200 ns (which makes a sigprocmask syscall).
// A new fiber's stack is prepared so that the `ret` lands in the trampoline with an aligned stack.
// ---------------------------------------------------------------------------------------------------
// Elsewhere (or with -DEMU_USE_UCONTEXT, e.g. EMU_USE_UCONTEXT=1 cargo test), glibc's ucontext is used:
// portable, about 10x slower.
#if defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
#define EMU_ASM_SWITCH 1
#endif

extern "C" {
__attribute__((visibility("hidden"), used, noreturn)) void emu_fiber_entry();
}
#if EMU_ASM_SWITCH
extern "C" {
__attribute__((visibility("hidden"))) void emu_switch(void** save_sp, void* new_sp);
__attribute__((visibility("hidden"))) void emu_fiber_trampoline();
}
asm(R"(
    .text
    .p2align 4
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch

    .p2align 4
    .globl emu_fiber_trampoline
    .hidden emu_fiber_trampoline
    .type emu_fiber_trampoline, @function
emu_fiber_trampoline:
    call emu_fiber_entry
    ud2
    .size emu_fiber_trampoline, .-emu_fiber_trampoline
)");
#endif

namespace emu {

constexpr size_t kPage = 4096;
constexpr int kMaxThreads = 1024;
constexpr unsigned kMaxSmem = 227 * 1024;  // H100 opt-in maximum per block
constexpr long kLivelockPasses = 100000;

std::vector<KernelEntry>& registry() {
    static std::vector<KernelEntry> r;
    return r;
}

// ---------------------------------------------------------------------------------------------------
// Fiber stacks: [guard page][EMU_STACK_KB][colour page]. MAP_NORESERVE: only touched pages cost memory.
// Pooled per OS thread, because a launch parks up to 1024 fibers and libtest runs tests on many threads.
// ---------------------------------------------------------------------------------------------------
static size_t stack_bytes() {
    static const size_t bytes = [] {
        const char* s = getenv("EMU_STACK_KB");
        long kb = s ? atol(s) : 64;
        if (kb < 4) kb = 4;
        return size_t(kb) * 1024;
    }();
    return bytes;
}
static size_t stack_mapping() { return kPage + stack_bytes() + kPage; }

struct StackPool {
    std::vector<void*> free;
    ~StackPool() {
        for (void* p : free) munmap(p, stack_mapping());
    }
};
static thread_local StackPool tl_stacks;

static void* stack_get() {
    if (!tl_stacks.free.empty()) {
        void* p = tl_stacks.free.back();
        tl_stacks.free.pop_back();
        return p;
    }
    void* p = mmap(nullptr, stack_mapping(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, kPage, PROT_NONE);
    return p;
}
static void stack_put(void* p) {
    if (p) tl_stacks.free.push_back(p);
}

// ---------------------------------------------------------------------------------------------------
// Guarded device memory: each buffer ends against a PROT_NONE page (and starts after one), so an access
// past either end faults and the fault handler names the buffer and the offset.
// ---------------------------------------------------------------------------------------------------
struct Alloc {
    uintptr_t map_base;
    size_t map_len;
    uintptr_t user;
    size_t bytes;
};
static std::mutex g_alloc_mu;
static std::map<uintptr_t, Alloc>& allocs() {  // keyed by user pointer
    static std::map<uintptr_t, Alloc> m;
    return m;
}

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Maps [guard][... buffer][guard]; the buffer (rounded up to 16 bytes) ends at the second guard.
static bool guarded_map(size_t bytes, Alloc* out) {
    size_t body = round_up(round_up(bytes, 16), kPage);
    size_t len = body + 2 * kPage;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    uintptr_t base = reinterpret_cast<uintptr_t>(p);
    mprotect(p, kPage, PROT_NONE);
    mprotect(reinterpret_cast<void*>(base + kPage + body), kPage, PROT_NONE);
    out->map_base = base;
    out->map_len = len;
    out->user = base + kPage + body - round_up(bytes, 16);
    out->bytes = bytes;
    return true;
}

// ---------------------------------------------------------------------------------------------------
// One launch: the kernel, its arguments and the state of the block being run.
// ---------------------------------------------------------------------------------------------------
struct Launch {
    const KernelEntry* k;
    std::shared_ptr<void> args;
    dim3 grid, block;
    unsigned smem;
    int schedule;
    uint64_t seed;
    int nthreads;
    std::vector<Fiber> fibers;
    std::vector<int> order;
    std::vector<WarpState> warps;
    // block barrier episode
    int exited = 0;
    int first_exited = -1;
    int bar_count = 0;
    int bar_kind = 0;
    int bar_acc = 0;
    int bar_first = -1;
    Site bar_site{nullptr, 0};
    // dynamic shared memory (guarded)
    Alloc smem_map{};
    unsigned char* smem_ptr = nullptr;
    void* sched_sp = nullptr;
#if !EMU_ASM_SWITCH
    std::vector<ucontext_t> uctx;  // per thread of the block
    ucontext_t sched_uctx;
#endif
    bool failed = false;
    std::string error;
    sigjmp_buf jb;
};

// The three moves between the scheduler and a fiber.
static void fiber_to_scheduler(Launch* L, Fiber* f) {
#if EMU_ASM_SWITCH
    emu_switch(&f->sp, L->sched_sp);
#else
    swapcontext(&L->uctx[f->linear], &L->sched_uctx);
#endif
}
[[noreturn]] static void leave_to_scheduler(Launch* L) {
#if EMU_ASM_SWITCH
    void* dummy;
    emu_switch(&dummy, L->sched_sp);
#else
    setcontext(&L->sched_uctx);
#endif
    __builtin_unreachable();
}
static void scheduler_to_fiber(Launch* L, Fiber* f) {
#if EMU_ASM_SWITCH
    emu_switch(&L->sched_sp, f->sp);
#else
    swapcontext(&L->sched_uctx, &L->uctx[f->linear]);
#endif
}
// Prepares a new fiber whose usable stack is [lo, top) (top 16-byte aligned).
static void prepare_fiber(Launch* L, Fiber* f, uintptr_t lo, uintptr_t top) {
#if EMU_ASM_SWITCH
    (void)L;
    (void)lo;
    // emu_switch pops r15 r14 r13 r12 rbx rbp and returns into the trampoline with rsp = top.
    void** sp = reinterpret_cast<void**>(top - 56);
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    sp[6] = reinterpret_cast<void*>(&emu_fiber_trampoline);
    f->sp = sp;
#else
    ucontext_t& c = L->uctx[f->linear];
    getcontext(&c);
    c.uc_stack.ss_sp = reinterpret_cast<void*>(lo);
    c.uc_stack.ss_size = top - lo;
    c.uc_link = nullptr;
    makecontext(&c, emu_fiber_entry, 0);
#endif
}

static std::string site_str(Site s) {
    if (!s.file) return "?";
    const char* f = strrchr(s.file, '/');
    return std::string(f ? f + 1 : s.file) + ":" + std::to_string(s.line);
}
static bool same_site(Site a, Site b) { return a.line == b.line && a.file && b.file && !strcmp(a.file, b.file); }
static std::string dim_str(unsigned x, unsigned y, unsigned z) {
    return "(" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")";
}
static std::string hex(unsigned v) {
    char b[16];
    snprintf(b, sizeof b, "0x%08x", v);
    return b;
}
static std::string where(const Launch* L, const Fiber* f) {
    std::string s = "kernel `" + std::string(L->k->name) + "` block " +
                    dim_str(tl_block_idx.x, tl_block_idx.y, tl_block_idx.z);
    if (f) s += " thread " + dim_str(f->tid.x, f->tid.y, f->tid.z);
    return s;
}

static void park() { fiber_to_scheduler(tl_launch, tl_cur); }

void fail(const std::string& msg) {
    Launch* L = tl_launch;
    if (!L || !tl_cur) {
        fprintf(stderr, "kernel emulator: %s (outside a kernel)\n", msg.c_str());
        abort();
    }
    if (!L->failed) {
        L->failed = true;
        L->error = where(L, tl_cur) + ": " + msg;
    }
    leave_to_scheduler(L);
}

unsigned char* dynamic_smem() { return tl_launch->smem_ptr; }

unsigned exited_lanes() {
    Launch* L = tl_launch;
    return L->warps[tl_cur->linear >> 5].exited;
}

// ---------------------------------------------------------------------------------------------------
// Block barrier: an arrival counter per episode. The last arriver releases the others and keeps running.
// Strict: every thread must arrive at the same call site, and no thread may have exited.
// ---------------------------------------------------------------------------------------------------
void barrier(Site site, int kind, int pred) {
    Launch* L = tl_launch;
    Fiber* f = tl_cur;
    if (L->exited > 0) {
        const Fiber& e = L->fibers[L->first_exited];
        fail("__syncthreads at " + site_str(site) + " reached after thread " + dim_str(e.tid.x, e.tid.y, e.tid.z) +
             " exited (post-exit barrier: every thread of a block must reach every __syncthreads)");
    }
    if (L->bar_count == 0) {
        L->bar_site = site;
        L->bar_kind = kind;
        L->bar_first = f->linear;
        L->bar_acc = kind == 2 ? 1 : 0;
    } else if (!same_site(site, L->bar_site) || kind != L->bar_kind) {
        const Fiber& o = L->fibers[L->bar_first];
        fail("divergent __syncthreads: this thread is at " + site_str(site) + " while thread " +
             dim_str(o.tid.x, o.tid.y, o.tid.z) + " waits at " + site_str(L->bar_site));
    }
    if (kind == 1) L->bar_acc += pred;
    if (kind == 2) L->bar_acc &= pred;
    if (kind == 3) L->bar_acc |= pred;
    if (++L->bar_count == L->nthreads) {
#if defined(EMU_PROFILE)
        prof::block_sync();
        prof::barrier_done(L->nthreads);
#endif
        for (Fiber& o : L->fibers) {
            if (o.wait == Wait::Barrier) {
                o.wait = Wait::None;
                o.runnable = true;
                o.bar_result = L->bar_acc;
            }
        }
        f->bar_result = L->bar_acc;
        L->bar_count = 0;
        return;
    }
    f->wait = Wait::Barrier;
    f->site = site;
    f->wait_name = "__syncthreads";
    f->runnable = false;
    park();
}

// ---------------------------------------------------------------------------------------------------
// Warp collective: every lane of `mask` deposits its input in its fiber; the last to arrive runs
// `combine`, which writes each lane's output, and releases the others. Up to 8 groups per warp.
// ---------------------------------------------------------------------------------------------------
void warp_collective(Site site, unsigned mask, int kind, const char* name, Combine combine) {
    Launch* L = tl_launch;
    Fiber* f = tl_cur;
    int lane = f->linear & 31;
    int w = f->linear >> 5;
    WarpState& W = L->warps[w];
    unsigned bit = 1u << lane;
    if (!(mask & bit))
        fail(std::string(name) + " at " + site_str(site) + ": lane " + std::to_string(lane) + " is not in its mask " +
             hex(mask));
    if (mask & W.exited)
        fail(std::string(name) + " at " + site_str(site) + ": mask " + hex(mask) + " names exited lanes " +
             hex(mask & W.exited) + " of warp " + std::to_string(w));
    // Lanes join the pending collective with exactly their mask. Groups with different masks may
    // overlap: lanes finishing a half-warp shuffle can wait at a full-warp __syncwarp while the other
    // half is still in its own shuffle. A lane that skips a pending collective of its own mask for a
    // different one is divergence; any other mismatch ends as a deadlock, reported by wait site.
    WarpGroup* g = nullptr;
    for (WarpGroup& c : W.groups) {
        if (c.mask == mask && mask) {
            if (c.kind != kind || !same_site(c.site, site))
                fail(std::string("divergent warp collectives: ") + name + " at " + site_str(site) +
                     " while other lanes of mask " + hex(mask) + " wait at " + site_str(c.site));
            g = &c;
            break;
        }
    }
    if (!g) {
        for (WarpGroup& c : W.groups)
            if (c.mask == 0) {
                g = &c;
                break;
            }
        if (!g) fail(std::string(name) + " at " + site_str(site) + ": more than 4 concurrent collectives in one warp");
        *g = WarpGroup{mask, 0, kind, site, combine};
    }
    g->arrived |= bit;
    if (g->arrived == mask) {
        Fiber* lanes[32] = {};
        int base = w * 32;
        for (int l = 0; l < 32 && base + l < L->nthreads; ++l) lanes[l] = &L->fibers[base + l];
        g->mask = 0;
        g->arrived = 0;
#if defined(EMU_PROFILE)
        prof::collective(name);
#endif
        combine(lanes, mask);
        for (int l = 0; l < 32; ++l) {
            if ((mask >> l & 1) && l != lane) {
                lanes[l]->wait = Wait::None;
                lanes[l]->runnable = true;
            }
        }
        return;
    }
    f->wait = Wait::Warp;
    f->site = site;
    f->wait_name = name;
    f->runnable = false;
    park();
}

void nanosleep_yield() {
    tl_cur->wait = Wait::Sleep;
    park();
    tl_cur->wait = Wait::None;
}

// A thread returned from the kernel: a barrier or collective still waiting for it can never complete.
static void on_exit(Launch* L, Fiber* f) {
    L->exited++;
    if (L->first_exited < 0) L->first_exited = f->linear;
    int lane = f->linear & 31;
    WarpState& W = L->warps[f->linear >> 5];
    W.exited |= 1u << lane;
    if (L->bar_count > 0)
        fail("thread exited while " + std::to_string(L->bar_count) + " thread(s) wait at __syncthreads (" +
             site_str(L->bar_site) + "): every thread of a block must reach every __syncthreads");
    for (WarpGroup& g : W.groups)
        if (g.mask >> lane & 1)
            fail("thread exited while lanes " + hex(g.arrived) + " wait at a warp collective (" + site_str(g.site) +
                 ") whose mask " + hex(g.mask) + " names it");
}

}  // namespace emu

extern "C" void emu_fiber_entry() {
    using namespace emu;
    Launch* L = tl_launch;
    L->k->run(L->k->fn, L->args.get());
    Fiber* f = tl_cur;
    on_exit(L, f);
    f->done = true;
    leave_to_scheduler(L);
}

namespace emu {

// ---------------------------------------------------------------------------------------------------
// Scheduler: blocks in order (x fastest); within a block, passes over the threads in schedule order,
// resuming each runnable one until it parks or exits.
// ---------------------------------------------------------------------------------------------------
static void resume(Launch* L, Fiber* f) {
    if (!f->started) {
        f->stack = stack_get();
        if (!f->stack) {
            L->failed = true;
            L->error = where(L, f) + ": out of memory for a fiber stack";
            return;
        }
        f->started = true;
        uintptr_t top = reinterpret_cast<uintptr_t>(f->stack) + kPage + stack_bytes() + kPage;
        top -= size_t(f->linear % 64) * 64;  // cache colouring: stack tops must not alias in L1/L2
        top &= ~uintptr_t(15);
        prepare_fiber(L, f, reinterpret_cast<uintptr_t>(f->stack) + kPage, top);
    }
    tl_cur = f;
    scheduler_to_fiber(L, f);
    tl_cur = nullptr;
    if (f->done) {
        stack_put(f->stack);
        f->stack = nullptr;
    }
}

static std::string ranges(std::vector<int> ids) {
    std::sort(ids.begin(), ids.end());
    std::string s;
    for (size_t i = 0; i < ids.size();) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        if (!s.empty()) s += ",";
        s += std::to_string(ids[i]);
        if (j > i) s += ".." + std::to_string(ids[j]);
        i = j + 1;
    }
    return "[" + s + "]";
}

static std::string deadlock_report(Launch* L) {
    std::vector<std::pair<std::string, std::vector<int>>> groups;
    for (const Fiber& f : L->fibers) {
        if (f.done) continue;
        std::string key = std::string(f.wait_name) + " (" + site_str(f.site) + ")";
        auto it = std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == key; });
        if (it == groups.end()) groups.push_back({key, {f.linear}});
        else it->second.push_back(f.linear);
    }
    std::string s;
    for (auto& g : groups) {
        if (!s.empty()) s += " / ";
        s += std::to_string(g.second.size()) + " thread(s) " + ranges(g.second) + " wait at " + g.first;
    }
    return s;
}

static void release_stacks(Launch* L) {
    for (Fiber& f : L->fibers) {
        stack_put(f.stack);
        f.stack = nullptr;
    }
}

static bool run_block(Launch* L, std::mt19937_64& rng) {
    int n = L->nthreads;
    for (int i = 0; i < n; ++i) {
        Fiber& f = L->fibers[i];
        f.started = f.done = false;
        f.runnable = true;
        f.wait = Wait::None;
        f.site = Site{nullptr, 0};
        f.copies.clear();
        f.cp_group = 0;
    }
    for (size_t w = 0; w < L->warps.size(); ++w) {
        int live = std::min(32, n - int(w) * 32);
        L->warps[w] = WarpState{};
        L->warps[w].exited = live == 32 ? 0u : ~((1u << live) - 1u);
    }
    L->exited = 0;
    L->first_exited = -1;
    L->bar_count = 0;
    if (L->smem_ptr) memset(L->smem_ptr, 0xff, L->smem);  // poison: uninitialised reads give NaN / -1
    if (L->schedule == 2) std::shuffle(L->order.begin(), L->order.end(), rng);

    long idle = 0;
    for (;;) {
        bool ran = false, progress = false;
        int done = 0;
        for (int i : L->order) {
            Fiber* f = &L->fibers[i];
            if (f->done) {
                ++done;
                continue;
            }
            if (!f->runnable) continue;
            ran = true;
            resume(L, f);
            if (L->failed) return false;
            if (f->done) ++done;
            if (f->wait != Wait::Sleep) progress = true;
        }
        if (done == n) return true;
        if (!ran) {
            L->failed = true;
            L->error = where(L, nullptr) + ": deadlock: " + deadlock_report(L);
            return false;
        }
        idle = progress ? 0 : idle + 1;
        if (idle > kLivelockPasses) {
            L->failed = true;
            L->error = where(L, nullptr) + ": livelock: no progress after " + std::to_string(kLivelockPasses) +
                       " passes: " + deadlock_report(L);
            return false;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Faults: a SIGSEGV/SIGBUS inside a kernel is turned into a launch error naming the guard it hit.
// Faults elsewhere go to the previous handler (Rust's stack-overflow handler, or the default).
// ---------------------------------------------------------------------------------------------------
static struct sigaction g_old_segv, g_old_bus;

static std::string describe_fault(Launch* L, uintptr_t a, uintptr_t sp) {
    char buf[256];
    Fiber* f = tl_cur;
    if (f && f->stack) {
        // The guard page was hit, or a large frame moved the stack pointer below the stack altogether.
        uintptr_t s = reinterpret_cast<uintptr_t>(f->stack);
        if ((a >= s && a < s + kPage) || sp < s + kPage) {
            snprintf(buf, sizeof buf, "fiber stack overflow (stacks are %zu KiB; set EMU_STACK_KB to raise)",
                     stack_bytes() / 1024);
            return buf;
        }
    }
    if (L->smem_map.map_base && a >= L->smem_map.map_base && a < L->smem_map.map_base + L->smem_map.map_len) {
        long off = long(a - reinterpret_cast<uintptr_t>(L->smem_ptr));
        snprintf(buf, sizeof buf, "out-of-bounds access to dynamic shared memory at byte offset %ld (size %u)", off,
                 L->smem);
        return buf;
    }
    if (g_alloc_mu.try_lock()) {
        std::string r;
        for (auto& [user, al] : allocs()) {
            if (a >= al.map_base && a < al.map_base + al.map_len) {
                long off = long(a) - long(al.user);
                snprintf(buf, sizeof buf,
                         "out-of-bounds access to device buffer 0x%lx (%zu bytes) at byte offset %ld (%s)",
                         (unsigned long)al.user, al.bytes, off, off < 0 ? "before its start" : "past its end");
                r = buf;
                break;
            }
        }
        g_alloc_mu.unlock();
        if (!r.empty()) return r;
    }
    snprintf(buf, sizeof buf, "invalid memory access at address 0x%lx (not inside any device buffer)",
             (unsigned long)a);
    return buf;
}

static void on_fault(int sig, siginfo_t* info, void* uctx) {
    Launch* L = tl_launch;
    if (!L || !tl_cur) {
        // Not ours: reinstall the previous handler and return, so the faulting instruction re-runs under it.
        sigaction(sig, sig == SIGSEGV ? &g_old_segv : &g_old_bus, nullptr);
        return;
    }
    L->failed = true;
#if defined(__x86_64__)
    uintptr_t sp = uintptr_t(static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_RSP]);
#elif defined(__aarch64__)
    uintptr_t sp = uintptr_t(static_cast<ucontext_t*>(uctx)->uc_mcontext.sp);
#else
    uintptr_t sp = ~uintptr_t(0);
#endif
    L->error = where(L, tl_cur) + ": " + describe_fault(L, reinterpret_cast<uintptr_t>(info->si_addr), sp);
    tl_cur = nullptr;
    siglongjmp(L->jb, 1);
}

static thread_local bool tl_altstack_ready = false;

static void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
    });
    // A fiber stack overflow cannot run the handler on the overflowed stack: give the thread an
    // alternate signal stack unless it already has one (Rust installs one on the threads it starts).
    if (!tl_altstack_ready) {
        stack_t cur;
        if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
            size_t sz = 64 * 1024;
            void* p = mmap(nullptr, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p != MAP_FAILED) {
                stack_t ss{};
                ss.ss_sp = p;
                ss.ss_size = sz;
                sigaltstack(&ss, nullptr);  // deliberately kept for the thread's lifetime
            }
        }
        tl_altstack_ready = true;
    }
}

static void set_err(char* err, size_t errlen, const std::string& s) {
    if (err && errlen) {
        size_t n = std::min(errlen - 1, s.size());
        memcpy(err, s.data(), n);
        err[n] = 0;
    }
}

// Runs every block; separate from emu_launch so that nothing it keeps in registers matters after a
// siglongjmp out of a faulting kernel.
static __attribute__((noinline)) void run_grid(Launch* L) {
    std::mt19937_64 rng(L->seed);
#if defined(EMU_PROFILE)
    unsigned long total = (unsigned long)L->grid.x * L->grid.y * L->grid.z, linear = 0;
#endif
    for (unsigned z = 0; z < L->grid.z; ++z)
        for (unsigned y = 0; y < L->grid.y; ++y)
            for (unsigned x = 0; x < L->grid.x; ++x) {
#if defined(EMU_PROFILE)
                // the profiler may run only a sample of the blocks
                if (!prof::run_block(linear++, total)) continue;
                prof::block_begin();
#endif
                tl_block_idx = uint3{x, y, z};
                if (!run_block(L, rng)) return;
#if defined(EMU_PROFILE)
                prof::block_sync();
#endif
            }
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------------
// C API (see src/device/emu.rs)
// ---------------------------------------------------------------------------------------------------
extern "C" {

int emu_kernel_count() { return int(emu::registry().size()); }
const char* emu_kernel_name(int i) {
    auto& r = emu::registry();
    return i >= 0 && size_t(i) < r.size() ? r[i].name : nullptr;
}

void* emu_malloc(size_t bytes) {
    emu::Alloc a;
    if (!emu::guarded_map(bytes, &a)) return nullptr;
    memset(reinterpret_cast<void*>(a.user), 0xff, bytes);  // like cudaMalloc, contents are undefined: poison
    std::lock_guard<std::mutex> g(emu::g_alloc_mu);
    emu::allocs()[a.user] = a;
    return reinterpret_cast<void*>(a.user);
}

// Returns 0, or -1 when `p` is not a live allocation.
int emu_free(void* p) {
    std::lock_guard<std::mutex> g(emu::g_alloc_mu);
    auto it = emu::allocs().find(reinterpret_cast<uintptr_t>(p));
    if (it == emu::allocs().end()) return -1;
    munmap(reinterpret_cast<void*>(it->second.map_base), it->second.map_len);
    emu::allocs().erase(it);
    return 0;
}

// schedule: 0 forward, 1 reverse, 2 random (seeded). Returns 0, or -1 with a message in `err`.
int emu_launch(const char* name, const unsigned* grid, const unsigned* block, unsigned smem, void** params,
               const size_t* sizes, int nparams, int schedule, uint64_t seed, char* err, size_t errlen) {
    using namespace emu;
    const KernelEntry* k = nullptr;
    for (const KernelEntry& e : registry())
        if (!strcmp(e.name, name)) k = &e;
    if (!k) {
        set_err(err, errlen, std::string("no kernel named `") + name + "` is compiled into the emulator");
        return -1;
    }
    auto sig = [&] {
        std::string s;
        for (size_t i = 0; i < k->types.size(); ++i) s += (i ? ", " : "") + k->types[i];
        return std::string(name) + "(" + s + ")";
    };
    if (nparams != k->nparams) {
        set_err(err, errlen, "kernel `" + sig() + "` takes " + std::to_string(k->nparams) + " parameter(s), the launch passed " +
                                 std::to_string(nparams));
        return -1;
    }
    for (int i = 0; i < nparams; ++i) {
        if (sizes[i] != k->sizes[i]) {
            set_err(err, errlen, "kernel `" + sig() + "`: parameter " + std::to_string(i) + " is " + k->types[i] + " (" +
                                     std::to_string(k->sizes[i]) + " bytes), the launch passed " + std::to_string(sizes[i]) +
                                     " bytes");
            return -1;
        }
    }
    long threads = long(block[0]) * block[1] * block[2];
    if (!block[0] || !block[1] || !block[2] || threads > kMaxThreads || block[2] > 64) {
        set_err(err, errlen, "kernel `" + std::string(name) + "`: invalid block " + dim_str(block[0], block[1], block[2]) +
                                 " (1..1024 threads, z <= 64)");
        return -1;
    }
    if (!grid[0] || !grid[1] || !grid[2] || grid[1] > 65535 || grid[2] > 65535) {
        set_err(err, errlen, "kernel `" + std::string(name) + "`: invalid grid " + dim_str(grid[0], grid[1], grid[2]));
        return -1;
    }
    if (smem > kMaxSmem) {
        set_err(err, errlen, "kernel `" + std::string(name) + "`: " + std::to_string(smem) +
                                 " bytes of dynamic shared memory exceed the " + std::to_string(kMaxSmem) + "-byte limit");
        return -1;
    }
    if (tl_launch) {
        set_err(err, errlen, "kernel launch from inside a kernel");
        return -1;
    }
    install_fault_handler();

    auto L = std::make_unique<Launch>();
    L->k = k;
    L->args = k->unpack(params);
    L->grid = dim3{grid[0], grid[1], grid[2]};
    L->block = dim3{block[0], block[1], block[2]};
    L->smem = smem;
    L->schedule = schedule;
    L->seed = seed;
    L->nthreads = int(threads);
    L->fibers.resize(threads);
    for (int i = 0; i < threads; ++i) {
        Fiber& f = L->fibers[i];
        f.linear = i;
        f.tid = uint3{unsigned(i % block[0]), unsigned(i / block[0] % block[1]), unsigned(i / (block[0] * block[1]))};
        L->order.push_back(schedule == 1 ? int(threads) - 1 - i : i);
    }
    L->warps.resize((threads + 31) / 32);
#if !EMU_ASM_SWITCH
    L->uctx.resize(threads);
#endif
    if (!guarded_map(smem, &L->smem_map)) {
        set_err(err, errlen, "out of memory for dynamic shared memory");
        return -1;
    }
    L->smem_ptr = reinterpret_cast<unsigned char*>(L->smem_map.user);

    tl_launch = L.get();
    tl_block_dim = L->block;
    tl_grid_dim = L->grid;
#if defined(EMU_PROFILE)
    {
        std::vector<uintptr_t> lo;
        std::vector<size_t> len;
        {
            std::lock_guard<std::mutex> g(g_alloc_mu);
            for (auto& [user, al] : allocs()) {
                lo.push_back(user);
                len.push_back(al.bytes);
            }
        }
        prof::launch_begin(name, L->grid, L->block, smem, L->smem_ptr, lo.data(), len.data(), lo.size());
    }
#endif
    if (sigsetjmp(L->jb, 1) == 0) run_grid(L.get());
#if defined(EMU_PROFILE)
    prof::launch_end();
#endif
    tl_launch = nullptr;
    tl_cur = nullptr;
    release_stacks(L.get());
    munmap(reinterpret_cast<void*>(L->smem_map.map_base), L->smem_map.map_len);
    if (L->failed) {
        set_err(err, errlen, L->error);
        return -1;
    }
    return 0;
}

#if !defined(EMU_PROFILE)
// The profiler's C API in a build without it (see emu_profile.cpp).
int emu_profile_available() { return 0; }
void emu_profile_start(long) {}
const char* emu_profile_stop() { return "[]"; }
#endif

}  // extern "C"
