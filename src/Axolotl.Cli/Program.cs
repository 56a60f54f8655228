using Axolotl;
using Axolotl.Cli;

return Cli.Run(args);
