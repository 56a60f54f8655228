using System.Runtime.InteropServices;

namespace Axolotl.Distributed;

/// <summary>
/// The part of MPI that differs between implementations: which shared library to load and what the predefined handles
/// (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, MPI_IN_PLACE ...) are. The C functions themselves are the same everywhere
/// (<see cref="Mpi"/>). Open MPI's handles are pointers to global objects exported by libmpi (ompi_mpi_comm_world ...),
/// so they are the symbols' addresses. MPICH and its derivatives use integer constants instead; adding them means a
/// second factory here and nothing else.
/// </summary>
internal sealed record MpiAbi(string Library, nint Handle, nint CommWorld, nint Float, nint Double, nint Int64, nint Byte,
                              nint OpSum, nint OpMax, nint InPlace, nint StatusIgnore)
{
    /// <summary>AXOLOTL_MPI_LIBRARY wins; else Open MPI's soname (libmpi.so.40 since Open MPI 3), then the dev symlink.</summary>
    static IEnumerable<string> Candidates() =>
        Environment.GetEnvironmentVariable("AXOLOTL_MPI_LIBRARY") is { Length: > 0 } given ? [given] : ["libmpi.so.40", "libmpi.so"];

    public static MpiAbi Load()
    {
        var tried = new List<string>();
        foreach (var name in Candidates())
        {
            // RTLD_GLOBAL: Open MPI loads its components (transports, process managers) as plugins that resolve their
            // symbols against libmpi; loaded locally, as NativeLibrary.Load does, they fail with undefined symbols.
            nint handle = dlopen(name, RtldNow | RtldGlobal);
            if (handle == 0) { tried.Add($"{name} ({Marshal.PtrToStringUTF8(dlerror()) ?? "not found"})"); continue; }
            if (NativeLibrary.TryGetExport(handle, "ompi_mpi_comm_world", out _)) return OpenMpi(name, handle);
            tried.Add($"{name} (not Open MPI: only Open MPI's ABI is wired up)");
        }
        throw new UserError($"this run was started by an MPI launcher but no MPI library could be loaded: {string.Join("; ", tried)}. " +
                            "Install Open MPI (apt-get install openmpi-bin libopenmpi-dev) or set AXOLOTL_MPI_LIBRARY to its libmpi.so.");
    }

    static MpiAbi OpenMpi(string name, nint handle)
    {
        nint Symbol(string symbol) => NativeLibrary.GetExport(handle, symbol);
        return new MpiAbi(name, handle,
            CommWorld: Symbol("ompi_mpi_comm_world"),
            Float: Symbol("ompi_mpi_float"),
            Double: Symbol("ompi_mpi_double"),
            Int64: Symbol("ompi_mpi_int64_t"),
            Byte: Symbol("ompi_mpi_byte"),
            OpSum: Symbol("ompi_mpi_op_sum"),
            OpMax: Symbol("ompi_mpi_op_max"),
            InPlace: 1, // mpi.h: #define MPI_IN_PLACE ((void *) 1)
            StatusIgnore: 0); // mpi.h: #define MPI_STATUS_IGNORE ((MPI_Status *) 0)
    }

    public nint Function(string name) => NativeLibrary.GetExport(Handle, name);

    const int RtldNow = 2, RtldGlobal = 0x100;

    [DllImport("libc", EntryPoint = "dlopen")]
    static extern nint dlopen([MarshalAs(UnmanagedType.LPUTF8Str)] string file, int mode);

    [DllImport("libc", EntryPoint = "dlerror")]
    static extern nint dlerror();
}
