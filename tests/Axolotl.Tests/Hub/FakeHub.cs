using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace Axolotl.Tests.Hub;

/// <summary>
/// The endpoints of the Hugging Face Hub the client uses, on 127.0.0.1, from the Hub's documented behaviour:
/// <c>/api/{models|datasets}/{id}/revision/{rev}</c> (sha and siblings), HEAD/GET <c>/[datasets/]{id}/resolve/{rev}/{file}</c>
/// with X-Repo-Commit and the ETag (git blob sha1 for plain files; for LFS files a 302 to a second listener, the "CDN",
/// with X-Linked-Etag = sha256 and X-Linked-Size), Range requests on the CDN, X-Error-Code on 401/403/404. Every
/// request is recorded; <see cref="Fault"/> answers a request instead of the normal route, for injected failures.
/// </summary>
sealed class FakeHub : IDisposable
{
    public sealed record Request(string Method, string Path, Dictionary<string, string> Headers, bool Cdn)
    {
        public string? Header(string name) => Headers.GetValueOrDefault(name.ToLowerInvariant());
    }

    public sealed record Response(int Status, Dictionary<string, string> Headers, byte[] Body)
    {
        /// <summary>Close the connection after this many body bytes, with Content-Length still saying the whole.</summary>
        public int? DropAfter { get; init; }
        public static Response Error(int status, string? code = null, string? message = null) =>
            new(status, new() { ["X-Error-Code"] = code ?? "", ["X-Error-Message"] = message ?? "" }, []);
    }

    public sealed class Repo
    {
        public required string Commit { get; init; }
        public Dictionary<string, byte[]> Files { get; } = [];
        /// <summary>Files stored in LFS: served through the CDN, named by sha256.</summary>
        public Func<string, bool> IsLfs { get; init; } = f => f.EndsWith(".safetensors") || f.EndsWith(".bin");
        /// <summary>Readable only with this token (401 otherwise), as a private repo.</summary>
        public string? PrivateToken { get; init; }
        /// <summary>Files need this token (403 GatedRepo otherwise), as a gated repo whose listing is public.</summary>
        public string? GatedToken { get; init; }
    }

    readonly TcpListener _hub = new(IPAddress.Loopback, 0), _cdn = new(IPAddress.Loopback, 0);
    readonly CancellationTokenSource _stop = new();
    public Dictionary<string, Repo> Repos { get; } = [];
    /// <summary>Old id → new id: the Hub answers a renamed repo's URLs with a relative redirect.</summary>
    public Dictionary<string, string> Renamed { get; } = [];
    public ConcurrentQueue<Request> Requests { get; } = new();
    public Func<Request, Response?>? Fault { get; set; }

    public FakeHub()
    {
        _hub.Start();
        _cdn.Start();
        _ = Serve(_hub, cdn: false);
        _ = Serve(_cdn, cdn: true);
    }

    public string Endpoint => $"http://127.0.0.1:{((IPEndPoint)_hub.LocalEndpoint).Port}";
    string CdnRoot => $"http://127.0.0.1:{((IPEndPoint)_cdn.LocalEndpoint).Port}";

    public Repo Add(string key, Repo repo)
    {
        Repos[key] = repo;
        return repo;
    }

    public static string Sha256(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>The git blob id, which the Hub sends as the ETag of a file not in LFS.</summary>
    public static string GitSha1(byte[] bytes) => Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {bytes.Length}\0"), .. bytes]));

    public void Dispose()
    {
        _stop.Cancel();
        _hub.Stop();
        _cdn.Stop();
    }

    async Task Serve(TcpListener listener, bool cdn)
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await listener.AcceptTcpClientAsync(_stop.Token); }
            catch (Exception) { return; }
            _ = Task.Run(() => Handle(client, cdn));
        }
    }

    void Handle(TcpClient client, bool cdn)
    {
        using var _ = client;
        try
        {
            var stream = client.GetStream();
            var head = ReadHead(stream);
            if (head.Count == 0) return;
            var parts = head[0].Split(' ');
            var headers = head.Skip(1).Select(h => h.Split(':', 2)).ToDictionary(h => h[0].Trim().ToLowerInvariant(), h => h[1].Trim());
            var request = new Request(parts[0], parts[1], headers, cdn);
            Requests.Enqueue(request);
            var response = Fault?.Invoke(request) ?? (cdn ? Cdn(request) : Route(request));
            Write(stream, request, response);
        }
        catch (IOException) { }
    }

    static List<string> ReadHead(NetworkStream stream)
    {
        var bytes = new List<byte>();
        while (bytes.Count < 4 || !(bytes[^4] == '\r' && bytes[^3] == '\n' && bytes[^2] == '\r' && bytes[^1] == '\n'))
        {
            int b = stream.ReadByte();
            if (b < 0) return [];
            bytes.Add((byte)b);
        }
        return Encoding.ASCII.GetString(bytes.ToArray()).Split("\r\n").Where(l => l.Length > 0).ToList();
    }

    static void Write(NetworkStream stream, Request request, Response response)
    {
        var text = new StringBuilder($"HTTP/1.1 {response.Status} {(HttpStatusCode)response.Status}\r\n");
        foreach (var (name, value) in response.Headers) if (value.Length > 0) text.Append($"{name}: {value}\r\n");
        text.Append($"Content-Length: {response.Body.Length}\r\nConnection: close\r\n\r\n");
        stream.Write(Encoding.ASCII.GetBytes(text.ToString()));
        if (request.Method != "HEAD") stream.Write(response.Body, 0, response.DropAfter ?? response.Body.Length);
        stream.Flush();
    }

    Response Route(Request r)
    {
        var path = Uri.UnescapeDataString(r.Path.Split('?')[0]);
        var token = r.Header("Authorization")?.Replace("Bearer ", "");
        if (path.StartsWith("/api/"))
        {
            // /api/{models|datasets}/{org}/{name}/revision/{rev}
            var segments = path.Split('/');
            var type = segments[2].TrimEnd('s');
            var id = $"{segments[3]}/{segments[4]}";
            if (Renamed.TryGetValue(id, out var newId))
                return new(307, new() { ["Location"] = r.Path.Replace(id, newId) }, []);
            if (Find(type, id, token) is { } refusal) return refusal;
            var repo = Repos[$"{type}:{id}"];
            var revision = string.Join('/', segments[6..]);
            if (revision != "main" && revision != repo.Commit) return Response.Error(404, "RevisionNotFound", $"Invalid rev id: {revision}");
            var json = new JsonObject
            {
                ["id"] = id, ["sha"] = repo.Commit,
                ["siblings"] = new JsonArray(repo.Files.Keys.Select(f => (JsonNode)new JsonObject { ["rfilename"] = f }).ToArray()),
            };
            return new(200, new() { ["Content-Type"] = "application/json" }, Encoding.UTF8.GetBytes(json.ToJsonString()));
        }
        {
            // /[datasets/]{org}/{name}/resolve/{rev}/{file...}
            var segments = path.TrimStart('/').Split('/').ToList();
            var type = segments[0] == "datasets" ? "dataset" : "model";
            if (type == "dataset") segments.RemoveAt(0);
            var id = $"{segments[0]}/{segments[1]}";
            if (Renamed.TryGetValue(id, out var newId))
                return new(307, new() { ["Location"] = r.Path.Replace(id, newId) }, []);
            if (segments.Count < 5 || segments[2] != "resolve") return Response.Error(404);
            if (Find(type, id, token) is { } refusal) return refusal;
            var repo = Repos[$"{type}:{id}"];
            if (segments[3] != "main" && segments[3] != repo.Commit) return Response.Error(404, "RevisionNotFound");
            if (repo.GatedToken != null && token != repo.GatedToken)
                return Response.Error(token == null ? 401 : 403, "GatedRepo", $"Access to model {id} is restricted and you are not in the authorized list");
            var file = string.Join('/', segments[4..]);
            if (!repo.Files.TryGetValue(file, out var bytes)) return Response.Error(404, "EntryNotFound", $"{file} does not exist");
            if (repo.IsLfs(file))
            {
                var sha = Sha256(bytes);
                return new(302, new()
                {
                    ["Location"] = $"{CdnRoot}/blobs/{sha}", ["X-Repo-Commit"] = repo.Commit,
                    ["X-Linked-Etag"] = $"\"{sha}\"", ["X-Linked-Size"] = bytes.Length.ToString(), ["ETag"] = "\"pointer-etag\"",
                }, []);
            }
            return new(200, new() { ["X-Repo-Commit"] = repo.Commit, ["ETag"] = $"\"{GitSha1(bytes)}\"" }, bytes);
        }
    }

    /// <summary>The Hub's answers for a repo that is missing (401 without a token, 404 with one) or private.</summary>
    Response? Find(string type, string id, string? token)
    {
        if (!Repos.TryGetValue($"{type}:{id}", out var repo) || repo.PrivateToken != null && token != repo.PrivateToken)
            return token == null ? Response.Error(401, "RepoNotFound", "Invalid username or password.") : Response.Error(404, "RepoNotFound", "Repository not found");
        return null;
    }

    Response Cdn(Request r)
    {
        var sha = r.Path.Split('/')[^1];
        var bytes = Repos.Values.SelectMany(repo => repo.Files.Values).FirstOrDefault(b => Sha256(b) == sha);
        if (bytes == null) return Response.Error(404);
        if (r.Header("Range") is { } range && range.StartsWith("bytes=") && range.EndsWith('-'))
        {
            var from = int.Parse(range["bytes=".Length..^1]);
            if (from >= bytes.Length) return new(416, new() { ["Content-Range"] = $"bytes */{bytes.Length}" }, []);
            return new(206, new() { ["Content-Range"] = $"bytes {from}-{bytes.Length - 1}/{bytes.Length}" }, bytes[from..]);
        }
        return new(200, [], bytes);
    }
}
