// Kernel registry of the emulator: `KERNEL_REGISTER("name", fn)` records an `extern "C" __global__`
// function with a type-erased entry that unpacks a cuLaunchKernel-style `void**` parameter array into a
// tuple of the kernel's by-value parameters, after checking their count and sizes.
#pragma once

#include <cxxabi.h>
#include <cstdlib>
#include <memory>
#include <typeinfo>

namespace emu {

inline std::string type_name(const std::type_info& t) {
    int status = 0;
    char* d = abi::__cxa_demangle(t.name(), nullptr, nullptr, &status);
    std::string s = status == 0 && d ? d : t.name();
    std::free(d);
    return s;
}

struct KernelEntry {
    const char* name;
    int nparams;
    std::vector<size_t> sizes;
    std::vector<std::string> types;
    // Copies the parameters out of `params` into a new argument tuple (owned by the returned pointer).
    std::shared_ptr<void> (*unpack)(void** params);
    // Runs the kernel for the current fiber with its own copy of the arguments.
    void (*run)(void* fn, const void* args);
    void* fn;
};

std::vector<KernelEntry>& registry();

template <typename... A>
struct KernelSig {
    using Tuple = std::tuple<std::decay_t<A>...>;
    template <size_t... I>
    static std::shared_ptr<void> unpack_impl(void** params, std::index_sequence<I...>) {
        auto t = std::make_shared<Tuple>();
        ((std::memcpy(&std::get<I>(*t), params[I], sizeof(std::get<I>(*t)))), ...);
        return t;
    }
    static std::shared_ptr<void> unpack(void** params) {
        return unpack_impl(params, std::index_sequence_for<A...>{});
    }
    static void run(void* fn, const void* args) {
        Tuple copy = *static_cast<const Tuple*>(args);  // by-value parameters are per thread
        std::apply(reinterpret_cast<void (*)(A...)>(fn), copy);
    }
};

struct Registrar {
    template <typename... A>
    Registrar(const char* name, void (*fn)(A...)) {
        static_assert((std::is_trivially_copyable<std::decay_t<A>>::value && ...),
                      "kernel parameters must be plain data passed by value");
        KernelEntry e;
        e.name = name;
        e.nparams = sizeof...(A);
        e.sizes = {sizeof(std::decay_t<A>)...};
        e.types = {type_name(typeid(std::decay_t<A>))...};
        e.unpack = &KernelSig<A...>::unpack;
        e.run = &KernelSig<A...>::run;
        e.fn = reinterpret_cast<void*>(fn);
        registry().push_back(std::move(e));
    }
};

}  // namespace emu

#define EMU_CAT2(a, b) a##b
#define EMU_CAT(a, b) EMU_CAT2(a, b)
#define KERNEL_REGISTER(name, fn) static ::emu::Registrar EMU_CAT(emu_registrar_, __COUNTER__)(name, fn)
