using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Axolotl.IO;

namespace Axolotl.Hub;

/// <summary>Bytes of one file arriving: <see cref="Done"/> of <see cref="Total"/> (null when the server did not say).</summary>
internal readonly record struct HubProgress(string Repo, string File, long Done, long? Total);

/// <summary>
/// Downloads from the Hugging Face Hub (HF_ENDPOINT) into <see cref="HfCache"/> as huggingface_hub does, so Python and
/// Axolotl.NET share one cache: <c>blobs/{etag}</c> (the sha256 for LFS files, the git blob id for others),
/// <c>snapshots/{commit}/{path}</c> as relative symlinks to the blobs, <c>refs/{revision}</c> holding the commit.
/// A blob is written as <c>{etag}.incomplete</c> and renamed only when whole (and, for LFS files, its sha256 equal to the
/// ETag), so a snapshot never points at a partial or corrupt blob; an interrupted download resumes from the partial
/// with a Range request.
/// </summary>
internal sealed partial class HubClient : IDisposable
{
    public const string DefaultEndpoint = "https://huggingface.co";

    readonly HttpClient _http;
    readonly string? _token;
    readonly string _tokenSource;
    readonly Uri _endpoint;

    public HfCache Cache { get; }
    public string Endpoint { get; }
    /// <summary>Called as bytes arrive (from the downloading thread); the CLI draws progress bars from it.</summary>
    public Action<HubProgress>? Progress { get; set; }
    /// <summary>Tries per request, counting the first, on dropped connections, timeouts, 429 and 5xx answers.</summary>
    public int MaxAttempts { get; init; } = 5;
    /// <summary>The wait before the first retry; it doubles each time, up to 30 s.</summary>
    public TimeSpan FirstRetryDelay { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>How long a response may stay silent (headers, or between body reads) before the try counts as dropped.</summary>
    public TimeSpan StallTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <param name="tokenSource">Where <paramref name="token"/> came from, for messages about a refused token.</param>
    public HubClient(HfCache cache, string? endpoint = null, string? token = null, string tokenSource = "HF_TOKEN")
    {
        Cache = cache;
        Endpoint = (endpoint is { Length: > 0 } ? endpoint : DefaultEndpoint).TrimEnd('/');
        _endpoint = new Uri(Endpoint + "/");
        _token = token is { Length: > 0 } ? token : null;
        _tokenSource = tokenSource;
        // Redirects are followed by hand: relative ones always, absolute ones (the CDN) only for the body, and the
        // token never leaves the endpoint's host.
        _http = new HttpClient(new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            ConnectTimeout = TimeSpan.FromSeconds(10),
        }) { Timeout = Timeout.InfiniteTimeSpan };
        _http.DefaultRequestHeaders.UserAgent.ParseAdd("axolotl.net/0.1");
    }

    /// <summary>
    /// huggingface_hub's settings: HF_ENDPOINT; HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN), else the token file
    /// HF_TOKEN_PATH, else $HF_HOME/token (what `huggingface-cli login` writes); the cache and HF_HUB_OFFLINE as
    /// <see cref="HfCache.FromEnvironment"/> reads them.
    /// </summary>
    public static HubClient FromEnvironment(Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        var cache = HfCache.FromEnvironment(env);
        string? token = null, source = "HF_TOKEN";
        foreach (var name in new[] { "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN" })
            if (token == null && env(name)?.Trim() is { Length: > 0 } value) (token, source) = (value, name);
        if (token == null)
        {
            var file = HfCache.PathVariable(env, "HF_TOKEN_PATH") ?? Path.Combine(HfCache.HfHome(env), "token");
            if (File.Exists(file) && File.ReadAllText(file).Trim() is { Length: > 0 } value) (token, source) = (value, file);
        }
        return new HubClient(cache, env("HF_ENDPOINT")?.Trim(), token, source);
    }

    public void Dispose() => _http.Dispose();

    /// <summary>Downloads what <paramref name="want"/> needs of a repo and returns its snapshot folder.</summary>
    public string Download(string repoId, string repoType, string? revision, HubWant want) =>
        Download(repoId, repoType, revision, (files, fetch) => HubFiles.Select(want, Label(repoId, repoType), files, fetch));

    /// <summary>
    /// Lists the repo at <paramref name="revision"/> (default main), fetches the files <paramref name="select"/> picks
    /// from the listing (it may fetch some itself, through its second argument, to decide), writes
    /// refs/{revision} once all are in place, and returns the snapshot folder.
    /// </summary>
    public string Download(string repoId, string repoType, string? revision, Func<IReadOnlyList<string>, Func<string, string>, List<string>> select)
    {
        if (Cache.Offline)
            throw new UserError($"{Label(repoId, repoType)} is needed from the Hub, but HF_HUB_OFFLINE is set; unset it to download.");
        revision ??= "main";
        var (commit, files) = ListFiles(repoId, repoType, revision);
        foreach (var file in select(files, f => DownloadFile(repoId, repoType, commit, f)))
            DownloadFile(repoId, repoType, commit, file);
        var repoFolder = Cache.RepoFolder(repoId, repoType);
        var snapshot = Directory.CreateDirectory(Path.Combine(repoFolder, "snapshots", commit)).FullName;
        // Written last, so that an interrupted download is never taken for a complete snapshot by the next run.
        if (revision != commit) AtomicFile.WriteAllText(Path.Combine(repoFolder, "refs", revision), commit);
        return snapshot;
    }

    /// <summary>The commit a revision points at and the repo's file names, from /api/{type}s/{id}/revision/{revision}.</summary>
    public (string Commit, IReadOnlyList<string> Files) ListFiles(string repoId, string repoType, string revision)
    {
        var url = $"{Endpoint}/api/{repoType}s/{repoId}/revision/{Uri.EscapeDataString(revision)}";
        return WithRetries($"the file list of {Label(repoId, repoType)}", () =>
        {
            using var response = Send(HttpMethod.Get, url, followAbsolute: false);
            ThrowUnlessOk(response, repoId, repoType, revision, file: null);
            JsonNode? json;
            try { json = JsonNode.Parse(response.Content.ReadAsStream()); }
            catch (JsonException e) { throw new TransientError($"{url} did not answer JSON ({e.Message.Split('.')[0]})"); }
            var commit = (string?)json?["sha"];
            if (commit == null || !HfCache.IsCommit(commit)) throw new UserError($"{url} answered without a commit hash (\"sha\"); is HF_ENDPOINT ({Endpoint}) a Hugging Face Hub?");
            var files = (json!["siblings"] as JsonArray ?? []).Select(s => (string?)s?["rfilename"]).OfType<string>().ToList();
            return (commit, (IReadOnlyList<string>)files);
        });
    }

    /// <summary>
    /// Makes snapshots/{revision}/{file} exist (a commit hash is best: the caller knows which snapshot it fills) and
    /// returns its path; a file already in the snapshot costs no request.
    /// </summary>
    public string DownloadFile(string repoId, string repoType, string commit, string file)
    {
        var repoFolder = Cache.RepoFolder(repoId, repoType);
        var snapshot = Path.GetFullPath(Path.Combine(repoFolder, "snapshots", commit));
        var pointer = Path.GetFullPath(Path.Combine(snapshot, file));
        // A listing is remote input: a name must not climb out of the snapshot.
        if (!pointer.StartsWith(snapshot + Path.DirectorySeparatorChar))
            throw new UserError($"{Label(repoId, repoType)} lists a file outside its own folder ('{file}'); refusing to write it.");
        if (File.Exists(pointer)) return pointer;
        var meta = Head(repoId, repoType, commit, file);
        var blob = Path.Combine(repoFolder, "blobs", meta.Etag);
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        using (Lock(repoFolder, meta.Etag))
            if (!File.Exists(blob))
                WithRetries($"{file} of {Label(repoId, repoType)}", () => FetchBlob(repoId, repoType, file, meta, blob));
        Link(pointer, blob);
        return pointer;
    }

    sealed record FileMeta(string Etag, long? Size, string Location);

    /// <summary>
    /// A HEAD on the resolve URL, following only relative redirects (a renamed repo); the Hub answers LFS files with a
    /// redirect to the CDN, and the headers of that answer carry the blob's sha256 (X-Linked-Etag) and size (X-Linked-Size).
    /// </summary>
    FileMeta Head(string repoId, string repoType, string revision, string file)
    {
        var prefix = repoType == "model" ? "" : $"{repoType}s/";
        var url = $"{Endpoint}/{prefix}{repoId}/resolve/{Uri.EscapeDataString(revision)}/{string.Join('/', file.Split('/').Select(Uri.EscapeDataString))}";
        return WithRetries($"the metadata of {file} in {Label(repoId, repoType)}", () =>
        {
            using var response = Send(HttpMethod.Head, url, followAbsolute: false,
                request => request.Headers.AcceptEncoding.Add(new StringWithQualityHeaderValue("identity")));
            bool redirect = (int)response.StatusCode is >= 300 and < 400;
            if (!redirect) ThrowUnlessOk(response, repoId, repoType, revision, file);
            var etag = Header(response, "X-Linked-Etag") ?? Header(response, "ETag");
            etag = etag == null ? null : etag.StartsWith("W/") ? etag[2..].Trim('"') : etag.Trim('"');
            if (etag == null || !SafeEtag().IsMatch(etag))
                throw new UserError($"{url} answered without a usable ETag ('{etag}'), so the file cannot be cached by hash; is HF_ENDPOINT ({Endpoint}) a Hugging Face Hub?");
            long? size = long.TryParse(Header(response, "X-Linked-Size"), out var linked) ? linked : response.Content.Headers.ContentLength;
            var location = redirect && response.Headers.Location is { } to ? new Uri(response.RequestMessage!.RequestUri!, to).AbsoluteUri : response.RequestMessage!.RequestUri!.AbsoluteUri;
            return new FileMeta(etag, size, location);
        });
    }

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    private static partial Regex SafeEtag();

    [GeneratedRegex("^[0-9a-f]{64}$")]
    private static partial Regex Sha256Etag();

    /// <summary>
    /// One try at the blob: resume {blob}.incomplete with a Range request, then check size and (LFS) sha256 before the
    /// rename. A mismatch deletes the partial and counts as a failed try, so the next one fetches from the start.
    /// </summary>
    void FetchBlob(string repoId, string repoType, string file, FileMeta meta, string blob)
    {
        var partial = blob + ".incomplete";
        using (OpenForWrite(partial, append: true)) { }
        long have = new FileInfo(partial).Length;
        if (meta.Size is long expected && have > expected) { File.Delete(partial); have = 0; }
        if (meta.Size is not long whole || have < whole)
        {
            using var response = Send(HttpMethod.Get, meta.Location, followAbsolute: true,
                request => { if (have > 0) request.Headers.Range = new RangeHeaderValue(have, null); });
            // 416: nothing after `have`; the partial holds the whole file, or is wrong, which the checks below tell.
            if (response.StatusCode != HttpStatusCode.RequestedRangeNotSatisfiable || have == 0)
            {
                ThrowUnlessOk(response, repoId, repoType, null, file);
                bool resumed = response.StatusCode == HttpStatusCode.PartialContent;
                if (resumed && response.Content.Headers.ContentRange?.From != have)
                {
                    File.Delete(partial);
                    throw new TransientError($"the server resumed {file} at the wrong offset");
                }
                if (!resumed) have = 0;
                var total = meta.Size ?? have + response.Content.Headers.ContentLength;
                Receive(response, partial, resumed, have, total, new HubProgress(Label(repoId, repoType), file, have, total));
            }
        }
        var got = new FileInfo(partial).Length;
        // Short: the body ended early without an error; the next try resumes it.
        if (meta.Size is long size && got < size) throw new TransientError($"{file} ended after {got} of {size} bytes");
        string? mismatch = got > meta.Size ? $"{got} bytes instead of {meta.Size}"
            : Sha256Etag().IsMatch(meta.Etag) && Sha256Of(partial) is var sha && sha != meta.Etag ? $"sha256 {sha} instead of {meta.Etag}"
            : null;
        if (mismatch != null)
        {
            File.Delete(partial);
            throw new TransientError($"{file} arrived corrupt ({mismatch})");
        }
        File.Move(partial, blob, overwrite: true);
    }

    /// <summary>Copies the body into the partial file; a silent or dropped connection is transient, a failed write is not.</summary>
    void Receive(HttpResponseMessage response, string partial, bool append, long done, long? total, HubProgress progress)
    {
        using var stall = new CancellationTokenSource(StallTimeout);
        using var abort = stall.Token.Register(response.Dispose);
        using var body = response.Content.ReadAsStream();
        using var output = OpenForWrite(partial, append);
        var buffer = new byte[1 << 20];
        Progress?.Invoke(progress);
        while (true)
        {
            int n;
            try { n = body.Read(buffer); }
            catch (Exception e) when (e is IOException or ObjectDisposedException or HttpRequestException)
            {
                throw new TransientError(stall.IsCancellationRequested ? $"no data for {StallTimeout.TotalSeconds:0} s" : $"the connection dropped ({e.Message})");
            }
            if (n == 0) break;
            stall.CancelAfter(StallTimeout);
            try { output.Write(buffer, 0, n); }
            catch (IOException e) { throw WriteFailed(partial, e); }
            done += n;
            Progress?.Invoke(progress with { Done = done, Total = total });
        }
        try { output.Flush(true); }
        catch (IOException e) { throw WriteFailed(partial, e); }
    }

    static FileStream OpenForWrite(string partial, bool append)
    {
        try { return new FileStream(partial, append ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw WriteFailed(partial, e); }
    }

    static UserError WriteFailed(string partial, Exception e) =>
        new($"could not write {partial} ({e.Message.TrimEnd('.')}); free disk space (or set HF_HUB_CACHE to a bigger disk) and run again: the download resumes from what is there.");

    static string Sha256Of(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    /// <summary>The snapshot file as a relative symlink into blobs/, as huggingface_hub makes it (a copy where links are not allowed).</summary>
    static void Link(string pointer, string blob)
    {
        var folder = Directory.CreateDirectory(Path.GetDirectoryName(pointer)!).FullName;
        var temp = Path.Combine(folder, $".{Path.GetFileName(pointer)}.{Guid.NewGuid():N}.tmp");
        try { File.CreateSymbolicLink(temp, Path.GetRelativePath(folder, blob)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { File.Copy(blob, temp); }
        File.Move(temp, pointer, overwrite: true);
    }

    /// <summary>
    /// huggingface_hub's lock file for a blob, .locks/{repo folder}/{etag}.lock: .NET takes an exclusive flock for
    /// FileShare.None, as Python's filelock does, so two processes (of either kind) never write one blob together.
    /// </summary>
    FileStream Lock(string repoFolder, string etag)
    {
        var path = Path.Combine(Cache.Root, ".locks", Path.GetFileName(repoFolder), etag + ".lock");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var waited = Stopwatch.StartNew();
        while (true)
        {
            try { return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) when (waited.Elapsed < TimeSpan.FromMinutes(10)) { Thread.Sleep(250); }
            catch (IOException e) { throw new UserError($"could not take the lock {path} ({e.Message.TrimEnd('.')}); another download of the same file may be stuck."); }
        }
    }

    /// <summary>A try that may be repeated: a dropped connection, a timeout, 429 or 5xx.</summary>
    sealed class TransientError(string message) : Exception(message);

    T WithRetries<T>(string what, Func<T> attempt)
    {
        for (int i = 1; ; i++)
        {
            try { return attempt(); }
            catch (TransientError) when (i < MaxAttempts) { }
            catch (TransientError e)
            {
                throw new UserError($"could not download {what} from {Endpoint} after {MaxAttempts} tries (last: {e.Message}); check the connection and run again (a partial file is kept and resumed), or set HF_HUB_OFFLINE=1 to use the cache only.");
            }
            Thread.Sleep(TimeSpan.FromTicks(Math.Min(FirstRetryDelay.Ticks << Math.Min(i - 1, 16), TimeSpan.FromSeconds(30).Ticks)));
        }
    }

    void WithRetries(string what, Action attempt) => WithRetries(what, () => { attempt(); return 0; });

    /// <summary>
    /// Sends one request, following relative redirects always and absolute ones when <paramref name="followAbsolute"/>;
    /// the token goes only to the endpoint's own host. Network failures and 429/5xx answers throw TransientError.
    /// </summary>
    HttpResponseMessage Send(HttpMethod method, string url, bool followAbsolute, Action<HttpRequestMessage>? setup = null)
    {
        var target = new Uri(url);
        for (int hops = 0; ; hops++)
        {
            using var request = new HttpRequestMessage(method, target);
            if (_token != null && Uri.Compare(target, _endpoint, UriComponents.SchemeAndServer, UriFormat.Unescaped, StringComparison.OrdinalIgnoreCase) == 0)
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _token);
            setup?.Invoke(request);
            HttpResponseMessage response;
            using (var timeout = new CancellationTokenSource(StallTimeout))
            {
                try { response = _http.Send(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token); }
                catch (HttpRequestException e) { throw new TransientError($"{e.Message.TrimEnd('.')} ({target.GetLeftPart(UriPartial.Authority)})"); }
                catch (TaskCanceledException) { throw new TransientError($"no answer from {target.GetLeftPart(UriPartial.Authority)} in {StallTimeout.TotalSeconds:0} s"); }
            }
            int status = (int)response.StatusCode;
            if (status is 429 or >= 500)
            {
                response.Dispose();
                throw new TransientError($"HTTP {status} from {target.GetLeftPart(UriPartial.Path)}");
            }
            if (status is >= 300 and < 400 && response.Headers.Location is { } location && hops < 10
                && (!location.IsAbsoluteUri || followAbsolute))
            {
                target = new Uri(target, location);
                response.Dispose();
                continue;
            }
            return response;
        }
    }

    static string? Header(HttpResponseMessage response, string name) =>
        response.Headers.TryGetValues(name, out var values) || response.Content.Headers.TryGetValues(name, out values) ? values.FirstOrDefault() : null;

    static string Label(string repoId, string? repoType) => repoType is null or "model" ? repoId : $"{repoType} {repoId}";

    /// <summary>The Hub's refusals as sentences that say what to do; X-Error-Code tells repo, revision and file apart.</summary>
    void ThrowUnlessOk(HttpResponseMessage response, string repoId, string? repoType, string? revision, string? file)
    {
        if (response.IsSuccessStatusCode) return;
        var code = Header(response, "X-Error-Code");
        var detail = Header(response, "X-Error-Message") is { Length: > 0 } m ? $": {m.TrimEnd('.')}" : "";
        var label = Label(repoId, repoType);
        var login = _token == null
            ? "set HF_TOKEN to a token that can read it, or run `huggingface-cli login`"
            : $"the token from {_tokenSource} does not give access to it: check it, or use one of an account with access";
        throw (int)response.StatusCode switch
        {
            401 => new UserError($"{label} could not be read from {Endpoint} (401{detail}): it does not exist, or it is private or gated and {login}."),
            403 => new UserError($"{label} is gated or private on {Endpoint} (403{detail}): accept its terms at {Endpoint}/{(repoType is null or "model" ? "" : repoType + "s/")}{repoId} if it asks, and {login}."),
            404 when code == "RevisionNotFound" || file == null && code != "RepoNotFound" && revision != "main" =>
                new UserError($"{label} has no revision '{revision}' on {Endpoint} (404{detail}); check revision / revision_of_model."),
            404 when code == "EntryNotFound" || file != null && code != "RepoNotFound" =>
                new UserError($"{label} has no file '{file}' at revision '{revision ?? "?"}' on {Endpoint} (404{detail})."),
            404 => new UserError($"{label} was not found on {Endpoint} (404{detail}); check the id" +
                (_token != null ? $", or, if it is private, that the token from {_tokenSource} can read it." : ".")),
            _ => new UserError($"{Endpoint} refused {response.RequestMessage?.Method} {response.RequestMessage?.RequestUri?.GetLeftPart(UriPartial.Path)} ({(int)response.StatusCode} {response.ReasonPhrase}{detail})."),
        };
    }
}
