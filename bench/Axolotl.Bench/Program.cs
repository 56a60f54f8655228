using Axolotl;
using Axolotl.Bench;

// AXOLOTL_MALLOC=jemalloc measures with jemalloc preloaded (Runtime/NativeAllocator.cs).
Axolotl.Runtime.NativeAllocator.ApplyChoice();
try
{
    return args.Length > 0 && args[0] == "generate" ? GenerationBench.Run(args[1..])
        : args.Length > 0 && args[0] == "scale" ? ScaleBench.Run(args[1..])
        : args.Length > 0 && args[0] == "memory" ? MemoryBench.Run(args[1..])
        : args.Length > 0 && args[0] == "data" ? DataBench.Run(args[1..])
        : args.Length > 0 && args[0] == "collectives" ? CollectivesBench.Run(args[1..])
        : args.Length > 0 && args[0] == "moe" ? MoeBench.Run(args[1..])
        : args.Length > 0 && args[0] == "kernels" ? KernelBench.Run(args[1..])
        : args.Length > 0 && args[0] == "train-round" ? SideBySideBench.TrainRound(args[1..])
        : Bench.Run(args);
}
catch (UserError e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
