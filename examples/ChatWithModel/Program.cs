// Asks the fine-tuned quickstart model (train it first: examples/FineTuneQuickstart or `axolotl train
// examples/quickstart.yml`) a question through Microsoft.Extensions.AI's IChatClient, streaming the answer.
// Run from the repository root:
//   dotnet run --project examples/ChatWithModel -c Release -- "Give three tips for staying healthy."
using Axolotl;
using Microsoft.Extensions.AI;

var question = args.Length > 0 ? args[0] : "Give three tips for staying healthy.";
using IChatClient chat = await AxolotlRuns.LoadChatClientAsync(AxolotlRuns.LoadConfig("examples/quickstart.yml"));
await foreach (var update in chat.GetStreamingResponseAsync(question, new ChatOptions { Temperature = 0.7f, MaxOutputTokens = 200 }))
    Console.Write(update.Text);
Console.WriteLine();
