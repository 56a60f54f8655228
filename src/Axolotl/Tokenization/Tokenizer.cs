namespace Axolotl.Tokenization;

// Placeholder until the tokenizer.json implementation lands.
public sealed class Tokenizer
{
    public static Tokenizer FromFolder(string directory) => throw new NotImplementedException();
    public int VocabSize { get; }
    public string? BosToken { get; } public string? EosToken { get; } public string? PadToken { get; } public string? UnkToken { get; }
    public int? BosTokenId { get; } public int? EosTokenId { get; } public int? PadTokenId { get; } public int? UnkTokenId { get; }
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true) => throw new NotImplementedException();
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false) => throw new NotImplementedException();
    public int? TokenToId(string token) => null;
    public string? IdToToken(int id) => null;
}
