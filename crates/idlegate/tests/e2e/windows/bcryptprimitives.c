/* A stand-in for Windows' bcryptprimitives.dll, for the tests under Wine only.
 *
 * Rust's standard library (1.78 and later) imports ProcessPrng from bcryptprimitives.dll for
 * its random keys (https://github.com/rust-lang/rust/pull/121337). Wine 8.0 (Debian 12's
 * wine64) has no such DLL, so every Rust program fails to start under it with
 * "Library bcryptprimitives.dll ... not found". The tests put this DLL into the Wine prefix
 * they make, and only when Wine has none of its own; idlegate.exe itself is not changed, and
 * real Windows (10 and later) has the real DLL.
 *
 * ProcessPrng fills a buffer with random bytes and returns TRUE
 * (https://learn.microsoft.com/en-us/windows/win32/seccng/processprng); here from
 * RtlGenRandom (advapi32's SystemFunction036), which Wine has.
 */
#include <windows.h>
#include <ntsecapi.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
