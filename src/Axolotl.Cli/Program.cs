using Axolotl;
using Axolotl.Cli;

// First, before any work: AXOLOTL_MALLOC=jemalloc re-executes this process once with jemalloc preloaded
// (less memory, slower here; Runtime/NativeAllocator.cs).
Axolotl.Runtime.NativeAllocator.ApplyChoice();
return Cli.Run(args);
