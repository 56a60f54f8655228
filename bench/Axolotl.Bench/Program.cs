using Axolotl;
using Axolotl.Bench;

try
{
    return Bench.Run(args);
}
catch (UserError e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
