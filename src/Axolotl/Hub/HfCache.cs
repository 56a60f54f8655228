using System.Text.RegularExpressions;

namespace Axolotl.Hub;

/// <summary>
/// The local Hugging Face Hub cache, in huggingface_hub's layout, so that repos Python users already downloaded are
/// used in place: <c>{root}/models--org--name/refs/main</c> holds a commit hash, <c>snapshots/{commit}/</c> the files
/// (symlinks into <c>blobs/</c>). <see cref="HubClient"/> fills it in the same layout.
/// </summary>
internal sealed partial class HfCache(string root, bool offline = false)
{
    public string Root { get; } = root;
    /// <summary>HF_HUB_OFFLINE: the cache is all there is; nothing is downloaded.</summary>
    public bool Offline { get; } = offline;

    /// <summary>
    /// huggingface_hub's resolution: HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    /// ~/.cache/huggingface/hub. The environment is a parameter so tests need not touch the process's own.
    /// </summary>
    public static HfCache FromEnvironment(Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        var root = PathVariable(env, "HF_HUB_CACHE") ?? Path.Combine(HfHome(env), "hub");
        bool offline = env("HF_HUB_OFFLINE")?.Trim().ToUpperInvariant() is "1" or "ON" or "YES" or "TRUE";
        return new HfCache(root, offline);
    }

    /// <summary>HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface: where the hub cache and the token file live.</summary>
    internal static string HfHome(Func<string, string?> env) =>
        PathVariable(env, "HF_HOME") ?? Path.Combine(PathVariable(env, "XDG_CACHE_HOME") ?? ExpandHome("~/.cache"), "huggingface");

    internal static string? PathVariable(Func<string, string?> env, string name) => env(name) is { Length: > 0 } v ? ExpandHome(v) : null;

    static string ExpandHome(string path) =>
        path == "~" || path.StartsWith("~/") ? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile) + path[1..] : path;

    /// <summary>huggingface_hub's validate_repo_id: "name" or "org/name" of word characters, '-' and '.', no "--" or "..".</summary>
    public static bool LooksLikeRepoId(string value) =>
        value.Length <= 96 && RepoIdPattern().IsMatch(value) && !value.Contains("--") && !value.Contains("..");

    [GeneratedRegex(@"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$")]
    private static partial Regex RepoIdPattern();

    [GeneratedRegex("^[0-9a-f]{40}$")]
    private static partial Regex CommitPattern();

    internal static bool IsCommit(string revision) => CommitPattern().IsMatch(revision);

    /// <summary>The repo's folder in the cache, whether or not it exists.</summary>
    public string RepoFolder(string repoId, string repoType = "model") => Path.Combine(Root, $"{repoType}s--{repoId.Replace("/", "--")}");

    /// <summary>
    /// The snapshot folder of <paramref name="revision"/> (a branch or tag in refs/, or a full commit hash with a
    /// snapshot), or null with the reason in <paramref name="why"/>.
    /// </summary>
    public string? Resolve(string repoId, string repoType, string? revision, out string why)
    {
        revision ??= "main";
        var repo = RepoFolder(repoId, repoType);
        why = "";
        if (!Directory.Exists(repo))
        {
            why = $"no {Path.GetFileName(repo)} in the Hugging Face cache at {Root}";
            return null;
        }
        var refFile = Path.Combine(repo, "refs", revision);
        string? commit = File.Exists(refFile) ? File.ReadAllText(refFile).Trim() : CommitPattern().IsMatch(revision) ? revision : null;
        var snapshot = commit == null ? null : Path.Combine(repo, "snapshots", commit);
        if (snapshot != null && Directory.Exists(snapshot)) return snapshot;
        why = commit == null
            ? $"the Hugging Face cache at {Root} holds {repoId} but not revision '{revision}' (no refs/{revision})"
            : $"the Hugging Face cache at {Root} holds {repoId} but not the snapshot {commit} of revision '{revision}'";
        return null;
    }
}
